package sender

import (
	"context"
	"time"
)

// bucket is a token bucket of bytes per second. It lets a frame go when
// the bucket is not in debt and charges the frame's size, so frames larger
// than the burst still pass and the average rate holds.
type bucket struct {
	rate   float64 // bytes per second; 0: no limit
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate int64) *bucket {
	b := &bucket{rate: float64(rate), last: time.Now()}
	b.burst = max(b.rate/10, 64<<10)
	return b
}

// take waits until n bytes may be sent, or ctx is done.
func (b *bucket) take(ctx context.Context, n int) error {
	if b.rate == 0 {
		return nil
	}
	now := time.Now()
	b.tokens = min(b.tokens+now.Sub(b.last).Seconds()*b.rate, b.burst)
	b.last = now
	if b.tokens < 0 {
		t := time.NewTimer(time.Duration(-b.tokens / b.rate * float64(time.Second)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		now = time.Now()
		b.tokens += now.Sub(b.last).Seconds() * b.rate
		b.last = now
	}
	b.tokens -= float64(n)
	return nil
}
