package function

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
)

func FuzzDecodeValue(f *testing.F) {
	f.Add(AppendValue(nil, Value{Kind: KindStr, Str: "x"}))
	f.Add(AppendValue(nil, Value{Kind: KindNum, Num: 1.5}))
	f.Add([]byte{KindJSON, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := DecodeValue(b)
		if err != nil {
			if !errors.Is(err, ErrEncoding) {
				t.Fatalf("error %v does not wrap ErrEncoding", err)
			}
			return
		}
		if got, err := DecodeValue(AppendValue(nil, v)); err != nil || (got != v && got.Num == got.Num) {
			t.Fatalf("re-encoding %+v: %+v, %v", v, got, err)
		}
	})
}

func FuzzDecodeCallAndInput(f *testing.F) {
	f.Add(AppendCall(nil, "f", "d", []Value{{Kind: KindNum, Num: 2}, {Kind: KindStr, Str: "s"}}))
	f.Add(AppendInput(nil, &Input{Topic: "a/b", Props: [][2]string{{"k", "v"}}, Payload: []byte("p")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, _, err := DecodeCall(b); err != nil && !errors.Is(err, ErrEncoding) {
			t.Fatal(err)
		}
		if _, err := DecodeInput(b); err != nil && !errors.Is(err, ErrEncoding) {
			t.Fatal(err)
		}
	})
}

// hostCallGuest's on_message passes the last 16 bytes of its input (the
// end of the payload) as four i32 pointer/length arguments to state_put,
// emit and log: the fuzzer chooses the host-call arguments.
func hostCallGuest() []byte {
	base := cat(lget(0), lget(1), []byte{0x6a}, i32c(16), []byte{0x6b}, []byte{0x21, 2})
	arg := func(off int) []byte { return cat(lget(2), i32load(off)) }
	body := cat(base,
		arg(0), arg(4), arg(8), arg(12), call(fnStatePut), opDrop,
		arg(0), arg(4), arg(8), arg(12), call(fnEmit), opDrop,
		i32c(0), arg(0), arg(4), call(fnLog),
		i32c(0))
	m := wmodule{types: stdTypes, imports: stdImports, memMin: 1, memMax: -1}
	m.funcs = []wfunc{{typ: 0, body: i32c(1024)}, {typ: 1, locals: []byte{tI32}, body: body}, {typ: 1, body: i32c(0)}}
	m.exports = []wexport{{"memory", 2, 0}, {AllocExport, 0, nImports}, {DefaultOnMessage, 0, nImports + 1}, {DefaultCall, 0, nImports + 2}}
	return m.bytes()
}

// FuzzHostCallArgs: whatever pointers and lengths a guest passes, the host
// call either works or fails that invocation with ErrBadPointer; the host
// never panics and the function keeps serving.
func FuzzHostCallArgs(f *testing.F) {
	rt := newRT(f)
	man := testManifest("fuzz")
	man.Limits.State = 1 << 20
	man.Limits.Timeout = 10 * 1e9 // a loaded machine, not the guest, is slow here
	m := load(f, rt, man, hostCallGuest())
	args := func(a, b, c, d uint32) []byte {
		var p [16]byte
		binary.LittleEndian.PutUint32(p[:], a)
		binary.LittleEndian.PutUint32(p[4:], b)
		binary.LittleEndian.PutUint32(p[8:], c)
		binary.LittleEndian.PutUint32(p[12:], d)
		return p[:]
	}
	f.Add(args(1030, 3, 1040, 8))
	f.Add(args(65530, 10, 0, 0))
	f.Add(args(0xffffffff, 0xffffffff, 1, 1))
	f.Add(args(0, 1<<30, 0, 0))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) < 16 {
			p = append(p, make([]byte, 16-len(p))...)
		}
		err := m.OnMessage(ctx, &Input{Topic: "in/x", DeviceID: "d", Payload: p}, func(context.Context, string, []byte) error { return nil })
		if err != nil && !errors.Is(err, ErrBadPointer) {
			t.Fatalf("err = %v, want nil or ErrBadPointer", err)
		}
	})
}
