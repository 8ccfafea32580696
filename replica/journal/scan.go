package journal

import (
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/record/logfile"
	"github.com/qcdp/qcdp/vfs"
)

// The journal's two kinds of file: logfile's layout, the journal's magics,
// version and sentinel errors.
var (
	segFormat = logfile.Format{Magic: segMagic, Version: fileVersion, Prefix: "journal", Kind: "segment",
		Corrupt: ErrCorrupt, Torn: ErrTorn, Group: ErrGroup}
	layerFormat = logfile.Format{Magic: layerMagic, Version: fileVersion, Prefix: "journal", Kind: "layer",
		Corrupt: ErrCorrupt, Torn: ErrTorn, Group: ErrGroup}
)

// formatOf is the format of files with magic (segMagic or layerMagic).
func formatOf(magic string) logfile.Format {
	if magic == layerMagic {
		return layerFormat
	}
	return segFormat
}

// scanFile reads every record of a segment or layer file, checking its
// checksums, and calls visit with each record and its file offset (the
// record's payload is valid only during the call). A segment's seqs must
// run on from its header's first seq. Only the newest segment (mayTear) may
// have a torn tail, and only from durable on (the acknowledged bytes end
// there); anything else that does not decode is ErrCorrupt naming the file,
// offset and seq.
func scanFile(f vfs.File, path string, size int64, magic, group string, nameFirst uint64, mayTear bool, durable int64, visit func(r *record.Record, pos int64) error) (logfile.Result, error) {
	return formatOf(magic).Scan(f, path, size, logfile.ScanOptions{
		Group: group, First: nameFirst, Ordered: magic == segMagic, MayTear: mayTear, Durable: durable}, visit)
}
