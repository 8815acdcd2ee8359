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
	now     func() time.Time
	elapsed func() time.Duration // monotonic time since open
	floor   int64
	last    int64
}

func newClock(now func() time.Time, elapsed func() time.Duration, floor int64) *clock {
	if now == nil {
		now = time.Now
	}
	if elapsed == nil {
		start := time.Now() // carries a monotonic reading
		elapsed = func() time.Duration { return time.Since(start) }
	}
	return &clock{now: now, elapsed: elapsed, floor: floor, last: floor}
}

// nanos returns the current queue time in unix nanoseconds (never decreasing).
// The caller serialises calls.
func (c *clock) nanos() int64 {
	v := max(c.now().UnixNano(), c.floor+int64(c.elapsed()), c.last)
	c.last = v
	return v
}
