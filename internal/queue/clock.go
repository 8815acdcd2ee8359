package queue

import "time"

// clock is the queue's persisted clock. Record times and ages come from it,
// never directly from the wall clock, so that a gateway without a real-time
// clock that boots at 1970 (or whose clock is stepped back by NTP) neither
// makes records look 50 years old nor lets queue time run backwards.
//
// Rule: queue time = max(wall clock, floor + time elapsed since Open on the
// monotonic clock, last value returned), where floor is the highest queue
// time persisted before (cursor file, newest record). While the wall clock is
// behind, queue time advances at the monotonic rate from floor; once the wall
// clock passes it (NTP sync), wall time is used again. Time spent powered off
// without an RTC is not counted.
type clock struct {
	now   func() time.Time
	start time.Time // at open; carries a monotonic reading for time.Now
	floor int64
	last  int64
}

func newClock(now func() time.Time, floor int64) *clock {
	if now == nil {
		now = time.Now
	}
	return &clock{now: now, start: now(), floor: floor, last: floor}
}

// nanos returns the current queue time in unix nanoseconds (never decreasing).
// The caller serialises calls.
func (c *clock) nanos() int64 {
	t := c.now()
	v := max(t.UnixNano(), c.floor+int64(t.Sub(c.start)), c.last)
	c.last = v
	return v
}
