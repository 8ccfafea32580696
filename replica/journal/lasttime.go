package journal

// LastTime returns the capture time of the newest record the journal
// holds, 0 when it holds none (a receiver keeps a stream's capture times
// from going back across sessions with it).
func (j *Journal) LastTime() int64 {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if len(j.recs) == 0 {
		return 0
	}
	return j.recs[len(j.recs)-1].time
}
