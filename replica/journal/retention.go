package journal

import "time"

// Retention says what the journal keeps.
type Retention struct {
	// Window and WindowBytes bound the short-term window, in which every
	// record boundary is a restore point: a record leaves it when it is
	// older than Window, or when the newer records alone fill WindowBytes
	// (0: no bound of that kind). Both 0: keep everything.
	Window      time.Duration
	WindowBytes int64
	// Schedules keep long-term restore points once the window has passed
	// them: for each schedule, the newest restore point of every Every-long
	// slot of time younger than Keep.
	Schedules []Schedule
	// Bookmarks keeps named bookmarks (user and app-consistent) this long
	// after their time, as long-term restore points.
	Bookmarks time.Duration
}

// Schedule is one long-term retention rule, for example hourly for a day
// (Every: time.Hour, Keep: 24 * time.Hour).
type Schedule struct {
	Every time.Duration
	Keep  time.Duration
}

func (r Retention) zero() bool { return r.Window <= 0 && r.WindowBytes <= 0 }
