//go:build wasip1

package outpostfn

import (
	"fmt"
	"time"
	"unsafe"
)

//go:wasmimport outpost log
func hostLog(level int32, ptr unsafe.Pointer, n uint32)

//go:wasmimport outpost fail
func hostFail(ptr unsafe.Pointer, n uint32)

//go:wasmimport outpost result
func hostResult(ptr unsafe.Pointer, n uint32)

//go:wasmimport outpost emit
func hostEmit(tp unsafe.Pointer, tn uint32, pp unsafe.Pointer, pn uint32) int32

//go:wasmimport outpost publish
func hostPublish(tp unsafe.Pointer, tn uint32, pp unsafe.Pointer, pn uint32, qos uint32) int32

//go:wasmimport outpost state_get
func hostStateGet(kp unsafe.Pointer, kn uint32, bp unsafe.Pointer, bn uint32) int32

//go:wasmimport outpost state_put
func hostStatePut(kp unsafe.Pointer, kn uint32, vp unsafe.Pointer, vn uint32) int32

//go:wasmimport outpost config_get
func hostConfigGet(kp unsafe.Pointer, kn uint32, bp unsafe.Pointer, bn uint32) int32

//go:wasmimport outpost now
func hostNow() int64

func sp(s string) (unsafe.Pointer, uint32) {
	return unsafe.Pointer(unsafe.StringData(s)), uint32(len(s))
}
func bp(b []byte) (unsafe.Pointer, uint32) {
	if len(b) == 0 {
		return nil, 0
	}
	return unsafe.Pointer(&b[0]), uint32(len(b))
}

var (
	inbuf   []byte
	scratch []byte
)

//go:wasmexport outpost_alloc
func outpostAlloc(size uint32) uint32 {
	if uint32(cap(inbuf)) < size {
		inbuf = make([]byte, size)
	}
	inbuf = inbuf[:size]
	if size == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(&inbuf[0])))
}

func fail(err error) int32 {
	s := err.Error()
	p, n := sp(s)
	hostFail(p, n)
	return 1
}

func recovered(rc *int32) {
	if r := recover(); r != nil {
		*rc = fail(fmt.Errorf("panic: %v", r))
	}
}

//go:wasmexport outpost_on_message
func outpostOnMessage(ptr, n uint32) (rc int32) {
	defer recovered(&rc)
	if err := HandleMessage(inbuf[:n]); err != nil {
		return fail(err)
	}
	return 0
}

//go:wasmexport outpost_call
func outpostCall(ptr, n uint32) (rc int32) {
	defer recovered(&rc)
	v, err := HandleCall(inbuf[:n])
	if err != nil {
		return fail(err)
	}
	scratch = AppendValue(scratch[:0], v)
	p, l := bp(scratch)
	hostResult(p, l)
	return 0
}

// Emit sends an output to the sinks of the trigger that ran the function
// (republish, uplink lanes, ...); topic "" keeps the input topic.
func Emit(topic string, payload []byte) error {
	t, tn := sp(topic)
	p, pn := bp(payload)
	return hostErr(hostEmit(t, tn, p, pn))
}

// Publish publishes on the local broker; the manifest must grant the topic
// (capabilities.publish).
func Publish(topic string, payload []byte, qos int) error {
	t, tn := sp(topic)
	p, pn := bp(payload)
	return hostErr(hostPublish(t, tn, p, pn, uint32(qos)))
}

// StateGet reads a value of the current device's state (per function).
func StateGet(key string) ([]byte, bool) {
	k, kn := sp(key)
	buf := make([]byte, 256)
	for {
		p, pn := bp(buf)
		n := hostStateGet(k, kn, p, pn)
		if n < 0 {
			return nil, false
		}
		if int(n) <= len(buf) {
			return buf[:n], true
		}
		buf = make([]byte, n)
	}
}

// StatePut stores a value in the current device's state; an empty value
// deletes the key. ErrDenied when the function's state limit is reached.
func StatePut(key string, val []byte) error {
	k, kn := sp(key)
	p, pn := bp(val)
	return hostErr(hostStatePut(k, kn, p, pn))
}

// Config returns a value of the manifest's config section.
func Config(key string) (string, bool) {
	k, kn := sp(key)
	buf := make([]byte, 128)
	for {
		p, pn := bp(buf)
		n := hostConfigGet(k, kn, p, pn)
		if n < 0 {
			return "", false
		}
		if int(n) <= len(buf) {
			return string(buf[:n]), true
		}
		buf = make([]byte, n)
	}
}

// Log writes a line to the agent's log, attributed to the function.
func Log(level Level, msg string) {
	p, n := sp(msg)
	hostLog(int32(level), p, n)
}

// Now is the host's wall clock.
func Now() time.Time { return time.Unix(0, hostNow()) }

func hostErr(rc int32) error {
	switch rc {
	case 0:
		return nil
	case -2:
		return ErrDenied
	}
	return fmt.Errorf("%w (code %d)", ErrHost, rc)
}
