//go:build race

package stream

// raceEnabled: under the race detector sync.Pool drops at random what it
// is given, so the zstd decoder allocates more than in the daemon's build.
const raceEnabled = true
