package function

// A tiny WebAssembly assembler for the fault tests: hand-written modules
// that loop, trap, grow memory or pass bad pointers, without a toolchain.

type wtype struct{ params, results []byte }

type wfunc struct {
	typ    int
	locals []byte // one local per entry (its value type)
	body   []byte // instructions without the final end
}

type wimport struct {
	mod, name string
	typ       int
}

type wexport struct {
	name string
	kind byte // 0 func, 2 memory
	idx  int
}

type wmodule struct {
	types   []wtype
	imports []wimport
	funcs   []wfunc
	memMin  int // pages; -1 = no memory
	memMax  int // -1 = none
	exports []wexport
	data    []byte // at offset 0
}

const (
	tI32 = 0x7f
	tI64 = 0x7e
)

func uleb(v uint64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			c |= 0x80
		}
		b = append(b, c)
		if v == 0 {
			return b
		}
	}
}

func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func wname(s string) []byte { return append(uleb(uint64(len(s))), s...) }

func vec(n int, items []byte) []byte { return append(uleb(uint64(n)), items...) }

func section(id byte, content []byte) []byte {
	return append(append([]byte{id}, uleb(uint64(len(content)))...), content...)
}

func (m wmodule) bytes() []byte {
	out := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	var b []byte
	for _, t := range m.types {
		b = append(b, 0x60)
		b = append(b, vec(len(t.params), t.params)...)
		b = append(b, vec(len(t.results), t.results)...)
	}
	out = append(out, section(1, vec(len(m.types), b))...)
	if len(m.imports) > 0 {
		b = nil
		for _, im := range m.imports {
			b = append(b, wname(im.mod)...)
			b = append(b, wname(im.name)...)
			b = append(b, 0)
			b = append(b, uleb(uint64(im.typ))...)
		}
		out = append(out, section(2, vec(len(m.imports), b))...)
	}
	b = nil
	for _, f := range m.funcs {
		b = append(b, uleb(uint64(f.typ))...)
	}
	out = append(out, section(3, vec(len(m.funcs), b))...)
	if m.memMin >= 0 {
		if m.memMax >= 0 {
			b = append([]byte{1}, append(uleb(uint64(m.memMin)), uleb(uint64(m.memMax))...)...)
		} else {
			b = append([]byte{0}, uleb(uint64(m.memMin))...)
		}
		out = append(out, section(5, vec(1, b))...)
	}
	b = nil
	for _, e := range m.exports {
		b = append(b, wname(e.name)...)
		b = append(b, e.kind)
		b = append(b, uleb(uint64(e.idx))...)
	}
	out = append(out, section(7, vec(len(m.exports), b))...)
	b = nil
	for _, f := range m.funcs {
		var body []byte
		body = append(body, uleb(uint64(len(f.locals)))...)
		for _, l := range f.locals {
			body = append(body, 1, l)
		}
		body = append(body, f.body...)
		body = append(body, 0x0b)
		b = append(b, uleb(uint64(len(body)))...)
		b = append(b, body...)
	}
	out = append(out, section(10, vec(len(m.funcs), b))...)
	if len(m.data) > 0 {
		d := []byte{0, 0x41, 0, 0x0b}
		d = append(d, vec(len(m.data), m.data)...)
		out = append(out, section(11, vec(1, d))...)
	}
	return out
}

// instruction helpers
func i32c(v int32) []byte    { return append([]byte{0x41}, sleb(int64(v))...) }
func lget(i int) []byte      { return append([]byte{0x20}, uleb(uint64(i))...) }
func call(i int) []byte      { return append([]byte{0x10}, uleb(uint64(i))...) }
func i32load(off int) []byte { return append([]byte{0x28, 2}, uleb(uint64(off))...) }
func cat(bs ...[]byte) []byte {
	var o []byte
	for _, b := range bs {
		o = append(o, b...)
	}
	return o
}

var (
	opUnreachable = []byte{0x00}
	opDrop        = []byte{0x1a}
	// loop forever: loop br 0 end
	opLoopForever = []byte{0x03, 0x40, 0x0c, 0x00, 0x0b}
	// grow until it fails, then trap: loop (memory.grow 1) -1 ne br_if 0 end unreachable
	opGrowUntilFail = []byte{0x03, 0x40, 0x41, 0x01, 0x40, 0x00, 0x41, 0x7f, 0x47, 0x0d, 0x00, 0x0b, 0x00}
)

// Type indexes used by guest(): 0 (i32)->i32, 1 (i32,i32)->i32,
// 2 (i32,i32)->(), 3 (i32,i32,i32,i32)->i32, 4 (i32,i32,i32)->(), 5 ()->()
var stdTypes = []wtype{
	{[]byte{tI32}, []byte{tI32}},
	{[]byte{tI32, tI32}, []byte{tI32}},
	{[]byte{tI32, tI32}, nil},
	{[]byte{tI32, tI32, tI32, tI32}, []byte{tI32}},
	{[]byte{tI32, tI32, tI32}, nil},
	{nil, nil},
}

// Imports of guest(): function indexes 0..4.
const (
	fnResult = iota
	fnFail
	fnStatePut
	fnEmit
	fnLog
	nImports
)

var stdImports = []wimport{
	{HostModule, "result", 2}, {HostModule, "fail", 2}, {HostModule, "state_put", 3},
	{HostModule, "emit", 3}, {HostModule, "log", 4},
}

// guest builds a module with the standard imports, one page of memory
// (max memMax pages), outpost_alloc returning 1024, and the given
// on_message and call bodies (params: ptr=0, len=1). data is placed at
// offset 0.
func guest(onMessage, callBody []byte, data []byte) []byte {
	m := wmodule{types: stdTypes, imports: stdImports, memMin: 1, memMax: -1, data: data}
	m.funcs = []wfunc{
		{typ: 0, body: i32c(1024)},
		{typ: 1, body: onMessage},
		{typ: 1, body: callBody},
	}
	m.exports = []wexport{
		{"memory", 2, 0},
		{AllocExport, 0, nImports},
		{DefaultOnMessage, 0, nImports + 1},
		{DefaultCall, 0, nImports + 2},
	}
	return m.bytes()
}
