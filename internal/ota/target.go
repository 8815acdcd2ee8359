package ota

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/outpost-edge/outpost/internal/ota/tuf"
)

// Custom is the "custom" object Outpost puts on each target in
// targets.json. It is covered by the targets signature.
type Custom struct {
	Kind     string `json:"kind"` // "full" (zstd-compressed binary) or "delta" (bsdiff patch)
	Version  string `json:"version"`
	Platform string `json:"platform"` // GOOS/GOARCH[/vN]
	// SHA256 and Size describe the installed binary (after decompression
	// or patching), which is verified before install.
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// From and FromSHA256: the binary a delta applies to.
	From       string `json:"from,omitempty"`
	FromSHA256 string `json:"from_sha256,omitempty"`
}

// FullTargetName and DeltaTargetName name targets in the repository.
func FullTargetName(platform, version string) string {
	return platform + "/outpost-" + version + ".zst"
}

func DeltaTargetName(platform, from, to string) string {
	return platform + "/outpost-" + from + "-to-" + to + ".patch"
}

// ParseCustom decodes a target's custom data.
func ParseCustom(tf tuf.TargetFile) (*Custom, error) {
	if len(tf.Custom) == 0 {
		return nil, fmt.Errorf("no custom data")
	}
	var c Custom
	if err := json.Unmarshal(tf.Custom, &c); err != nil {
		return nil, err
	}
	if (c.Kind != "full" && c.Kind != "delta") || c.Version == "" || c.Platform == "" || !hexSHA256().MatchString(c.SHA256) || c.Size <= 0 {
		return nil, fmt.Errorf("incomplete outpost custom data")
	}
	if c.Kind == "delta" && (c.From == "" || !hexSHA256().MatchString(c.FromSHA256)) {
		return nil, fmt.Errorf("delta without from/from_sha256")
	}
	return &c, nil
}

// Plan is what an update would install.
type Plan struct {
	Version string `json:"version"`
	Kind    string `json:"kind"` // full or delta
	Target  string `json:"target"`
	// Download is the number of bytes to fetch.
	Download int64          `json:"download"`
	Custom   Custom         `json:"custom"`
	File     tuf.TargetFile `json:"-"`
	// FullSize is the size of the full target, for comparison.
	FullSize int64 `json:"full_size"`
}

// choose picks the newest version for platform above running that is not
// bad, and a delta from the running binary (whose sha256 is runningSHA)
// when one exists and useDelta. It returns nil when nothing is newer.
func choose(targets map[string]tuf.TargetFile, platform, running, runningSHA string, st *State, useDelta bool) *Plan {
	var best *Plan
	for name, tf := range targets {
		c, err := ParseCustom(tf)
		if err != nil || c.Kind != "full" || c.Platform != platform {
			continue
		}
		if name != FullTargetName(platform, c.Version) {
			continue
		}
		if CompareVersions(c.Version, running) <= 0 || st.isBad(c.Version) {
			continue
		}
		if best == nil || CompareVersions(c.Version, best.Version) > 0 {
			best = &Plan{Version: c.Version, Kind: "full", Target: name, Download: tf.Length, Custom: *c, File: tf, FullSize: tf.Length}
		}
	}
	if best == nil || !useDelta || st.noDelta(best.Version) {
		return best
	}
	name := DeltaTargetName(platform, running, best.Version)
	tf, ok := targets[name]
	if !ok {
		return best
	}
	c, err := ParseCustom(tf)
	if err != nil || c.Kind != "delta" || c.FromSHA256 != runningSHA || c.SHA256 != best.Custom.SHA256 || c.Platform != platform {
		return best
	}
	if tf.Length >= best.File.Length {
		return best
	}
	return &Plan{Version: best.Version, Kind: "delta", Target: name, Download: tf.Length, Custom: *c, File: tf, FullSize: best.FullSize}
}

// fileSHA256 hashes a file.
func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// safeName turns a target name into a file name for the staging dir.
func safeName(s string) string {
	return strings.NewReplacer("/", "_", "\\", "_", "..", "_").Replace(s)
}
