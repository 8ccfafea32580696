package nbd

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// They are the protocol: never change.

const (
	nbdMagic       uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	optsMagic      uint64 = 0x49484156454F5054 // "IHAVEOPT"
	optReplyMagic  uint64 = 0x0003e889045565a9
	requestMagic   uint32 = 0x25609513
	simpleMagic    uint32 = 0x67446698
	structureMagic uint32 = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1

	clientFixedNewstyle uint32 = 1 << 0
	clientNoZeroes      uint32 = 1 << 1
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types.
const (
	repAck         uint32 = 1
	repServer      uint32 = 2
	repInfo        uint32 = 3
	repMetaContext uint32 = 4

	repErrUnsup    uint32 = 1<<31 + 1
	repErrPolicy   uint32 = 1<<31 + 2
	repErrInvalid  uint32 = 1<<31 + 3
	repErrUnknown  uint32 = 1<<31 + 6
	repErrShutdown uint32 = 1<<31 + 7
	repErrTooBig   uint32 = 1<<31 + 9
)

// NBD_INFO types.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Transmission flags.
const (
	tflagHasFlags        uint16 = 1 << 0
	tflagReadOnly        uint16 = 1 << 1
	tflagSendFlush       uint16 = 1 << 2
	tflagSendFUA         uint16 = 1 << 3
	tflagSendTrim        uint16 = 1 << 5
	tflagSendWriteZeroes uint16 = 1 << 6
	tflagSendDF          uint16 = 1 << 7
	tflagCanMultiConn    uint16 = 1 << 8
	tflagSendCache       uint16 = 1 << 10
	tflagSendFastZero    uint16 = 1 << 11
)

// Commands.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags.
const (
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Structured reply types and flags.
const (
	replyFlagDone       uint16 = 1 << 0
	replyTypeNone       uint16 = 0
	replyTypeOffsetData uint16 = 1
	replyTypeBlockState uint16 = 5
	replyTypeError      uint16 = 1<<15 + 1
)

// base:allocation states.
const (
	stateHole uint32 = 1 << 0
	stateZero uint32 = 1 << 1
)

const (
	// MetaBaseAllocation is the one metadata context the server offers.
	MetaBaseAllocation = "base:allocation"
	metaBaseAllocID    = 1

	// MaxPayload bounds one READ or WRITE, as QEMU's client does (32 MiB).
	MaxPayload = 32 << 20
	// maxOptionLen bounds option data the server reads into memory.
	maxOptionLen = 64 << 10
	// maxString is the protocol's bound on names and queries.
	maxString = 4096
	// maxExtents bounds the descriptors in one BLOCK_STATUS reply.
	maxExtents = 1024

	requestHeaderLen = 28
	preferredBlock   = 4096
)
