package loadgen

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// PayloadKind selects the payload format.
type PayloadKind string

const (
	// PayloadBinary is a 28-byte header (magic "OPB1", run id, publisher,
	// sequence, timestamp) followed by filler bytes.
	PayloadBinary PayloadKind = "binary"
	// PayloadJSON is a realistic sensor reading:
	//
	//	{"device_id":"dev-000003","run":"5f3a9c1e","seq":          42,"ts":      1234567890,"temp":21.37,"humidity":45.2,"quality":"good","pad":"xxxx"}
	//
	// Numbers are right-aligned in fixed-width fields (leading spaces are
	// JSON whitespace) so that seq, ts, temp and humidity are patched in
	// place; "pad" (or trailing spaces when fewer than 9 bytes are
	// missing) fills the message to the requested size.
	PayloadJSON PayloadKind = "json"
)

// Binary layout.
const (
	binMagic      = "OPB1"
	binOffRun     = 4
	binOffPub     = 8
	binOffSeq     = 12
	binOffTS      = 20
	binaryMinSize = 28
)

// JSON layout: literal pieces and fixed-width fields.
const (
	jDevPrefix = `{"device_id":"dev-`
	jDevWidth  = 6
	jRunSep    = `","run":"`
	jRunWidth  = 8
	jSeqSep    = `","seq":`
	jSeqWidth  = 12
	jTSSep     = `,"ts":`
	jTSWidth   = 15
	jTempSep   = `,"temp":`
	jTempWidth = 5 // dd.dd
	jHumSep    = `,"humidity":`
	jHumWidth  = 4 // dd.d
	jTail      = `,"quality":"good"`

	jOffDev   = len(jDevPrefix)
	jOffRun   = jOffDev + jDevWidth + len(jRunSep)
	jOffSeq   = jOffRun + jRunWidth + len(jSeqSep)
	jOffTS    = jOffSeq + jSeqWidth + len(jTSSep)
	jOffTemp  = jOffTS + jTSWidth + len(jTempSep)
	jOffHum   = jOffTemp + jTempWidth + len(jHumSep)
	jOffTail  = jOffHum + jHumWidth
	jsonMinSz = jOffTail + len(jTail) + 1 // closing brace

	jMaxPublishers = 999_999
)

// payloadFormat builds and stamps payloads of one kind and size for a run.
type payloadFormat struct {
	kind  PayloadKind
	size  int
	runID uint32
}

// minPayloadSize returns the smallest payload of kind k that carries the
// sequence number and timestamp.
func minPayloadSize(k PayloadKind) int {
	if k == PayloadJSON {
		return jsonMinSz
	}
	return binaryMinSize
}

// build returns publisher pub's initial payload (seq 0, ts 0).
func (f payloadFormat) build(pub int) []byte {
	p := make([]byte, f.size)
	switch f.kind {
	case PayloadJSON:
		var b strings.Builder
		fmt.Fprintf(&b, "%s%06d%s%08x%s%*d%s%*d%s%s%s%s%s", jDevPrefix, pub, jRunSep, f.runID,
			jSeqSep, jSeqWidth, 0, jTSSep, jTSWidth, 0, jTempSep, "20.00", jHumSep, "40.0", jTail)
		s := b.String()
		extra := f.size - len(s) - 1
		switch {
		case extra >= len(`,"pad":""`):
			s += `,"pad":"` + strings.Repeat("x", extra-len(`,"pad":""`)) + `"`
		default:
			s += strings.Repeat(" ", extra)
		}
		copy(p, s+"}")
	default:
		copy(p, binMagic)
		binary.BigEndian.PutUint32(p[binOffRun:], f.runID)
		binary.BigEndian.PutUint32(p[binOffPub:], uint32(pub))
		for i := binaryMinSize; i < len(p); i++ {
			p[i] = 'a' + byte(i%26)
		}
	}
	return p
}

// stamp writes seq and the send timestamp into a payload made by build.
func (f payloadFormat) stamp(p []byte, pub int, seq uint64, ts int64) {
	if f.kind != PayloadJSON {
		binary.BigEndian.PutUint64(p[binOffSeq:], seq)
		binary.BigEndian.PutUint64(p[binOffTS:], uint64(ts))
		return
	}
	putRightAligned(p[jOffSeq:jOffSeq+jSeqWidth], seq)
	putRightAligned(p[jOffTS:jOffTS+jTSWidth], uint64(ts))
	// A plausible reading that moves with seq: 20.00..27.99 °C, 40.0..59.9 %.
	t := (seq + uint64(pub)*37) % 800
	p[jOffTemp], p[jOffTemp+1] = '2', '0'+byte(t/100)
	p[jOffTemp+3], p[jOffTemp+4] = '0'+byte(t/10%10), '0'+byte(t%10)
	h := (seq*7 + uint64(pub)) % 200
	p[jOffHum], p[jOffHum+1], p[jOffHum+3] = '4'+byte(h/100), '0'+byte(h/10%10), '0'+byte(h%10)
}

// putRightAligned writes v in decimal right-aligned in dst, padding with
// spaces; digits that do not fit are dropped from the left (never reached
// with the widths above).
func putRightAligned(dst []byte, v uint64) {
	i := len(dst) - 1
	for ; i >= 0; i-- {
		dst[i] = '0' + byte(v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	for i--; i >= 0; i-- {
		dst[i] = ' '
	}
}

// stampInfo is what a subscriber reads back from a payload.
type stampInfo struct {
	run uint32
	pub uint32
	seq uint64
	ts  int64
}

// parsePayload decodes a load-generator payload of either kind; ok is false
// for anything else (another publisher's message, a retained leftover).
func parsePayload(p []byte) (stampInfo, bool) {
	var s stampInfo
	if len(p) >= binaryMinSize && string(p[:4]) == binMagic {
		s.run = binary.BigEndian.Uint32(p[binOffRun:])
		s.pub = binary.BigEndian.Uint32(p[binOffPub:])
		s.seq = binary.BigEndian.Uint64(p[binOffSeq:])
		s.ts = int64(binary.BigEndian.Uint64(p[binOffTS:]))
		return s, true
	}
	if len(p) < jsonMinSz || !bytes.HasPrefix(p, []byte(jDevPrefix)) ||
		string(p[jOffDev+jDevWidth:jOffRun]) != jRunSep ||
		string(p[jOffRun+jRunWidth:jOffSeq]) != jSeqSep ||
		string(p[jOffSeq+jSeqWidth:jOffTS]) != jTSSep {
		return s, false
	}
	pub, ok1 := parseDecimal(p[jOffDev : jOffDev+jDevWidth])
	run, ok2 := parseHex32(p[jOffRun : jOffRun+jRunWidth])
	seq, ok3 := parseDecimal(p[jOffSeq : jOffSeq+jSeqWidth])
	ts, ok4 := parseDecimal(p[jOffTS : jOffTS+jTSWidth])
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return s, false
	}
	s.run, s.pub, s.seq, s.ts = run, uint32(pub), seq, int64(ts)
	return s, true
}

// parseDecimal parses a right-aligned decimal field (leading spaces).
func parseDecimal(b []byte) (uint64, bool) {
	i := 0
	for i < len(b) && b[i] == ' ' {
		i++
	}
	if i == len(b) || len(b)-i > 19 {
		return 0, false
	}
	var v uint64
	for ; i < len(b); i++ {
		c := b[i] - '0'
		if c > 9 {
			return 0, false
		}
		v = v*10 + uint64(c)
	}
	return v, true
}

func parseHex32(b []byte) (uint32, bool) {
	var v uint32
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint32(c)
	}
	return v, true
}
