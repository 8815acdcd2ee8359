// Command anomaly is an example Outpost function (docs/functions.md).
//
// From a rule, fn('anomaly', temp, vibration) returns true when the pair
// is far from the device's running mean (kept in per-device state).
// On a message ({"temp":..,"vibration":..}) it emits an alert to the
// trigger's sinks when the reading is anomalous.
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o anomaly.wasm .
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"

	"github.com/outpost-edge/outpost/sdk/go/outpostfn"
)

func main() {}

var fields = []string{"temp", "vibration"}

func init() {
	outpostfn.OnCall(func(c *outpostfn.Call) (outpostfn.Value, error) {
		if len(c.Args) != 2 {
			return outpostfn.Null(), fmt.Errorf("anomaly: want (temp, vibration), got %d arguments", len(c.Args))
		}
		t, ok1 := c.Args[0].Float()
		v, ok2 := c.Args[1].Float()
		if !ok1 || !ok2 {
			return outpostfn.Null(), errors.New("anomaly: arguments must be numbers")
		}
		return outpostfn.Bool(check(t, v)), nil
	})
	outpostfn.OnMessage(func(m *outpostfn.Message) error {
		// JSONNumbers reads the two numbers without reflection: in a Go
		// guest, encoding/json.Unmarshal into a struct costs about 35 µs
		// a message, three times the rest of this function
		// (docs/bench/functions.md).
		var v [2]float64
		if !outpostfn.JSONNumbers(m.Payload, fields, v[:]) {
			return errors.New("anomaly: payload must be a JSON object with numbers temp and vibration")
		}
		temp, vib := v[0], v[1]
		if !check(temp, vib) {
			return nil
		}
		out := `{"device":` + strconv.Quote(m.DeviceID) + `,"temp":` + strconv.FormatFloat(temp, 'g', -1, 64) +
			`,"vibration":` + strconv.FormatFloat(vib, 'g', -1, 64) + `}`
		prefix, ok := outpostfn.Config("alert_prefix")
		if !ok {
			prefix = "alerts/anomaly/"
		}
		return outpostfn.Emit(prefix+m.DeviceID, []byte(out))
	})
}

// threshold is the score above which a reading is an anomaly; the
// manifest's config may override it. Config belongs to the loaded
// version (a new manifest is a new instance), so it is read once.
var threshold = sync.OnceValue(func() float64 {
	if s, ok := outpostfn.Config("threshold"); ok {
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return f
		}
	}
	return 3
})

// check scores the reading against the device's exponential moving mean
// of temp*vibration and updates the mean (per-device state "ema").
func check(temp, vib float64) bool {
	x := temp * vib
	var ema float64
	n := 0.0
	if b, ok := outpostfn.StateGet("ema"); ok && len(b) == 16 {
		ema = math.Float64frombits(binary.LittleEndian.Uint64(b))
		n = math.Float64frombits(binary.LittleEndian.Uint64(b[8:]))
	}
	anomalous := n >= 3 && math.Abs(x-ema) > threshold()*math.Max(1, math.Abs(ema))*0.5
	if n == 0 {
		ema = x
	} else {
		ema = 0.8*ema + 0.2*x
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], math.Float64bits(ema))
	binary.LittleEndian.PutUint64(b[8:], math.Float64bits(n+1))
	_ = outpostfn.StatePut("ema", b[:])
	return anomalous
}
