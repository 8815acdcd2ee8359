package ota

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"

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

// hexSHA512 matches a lowercase hex SHA-512.
var hexSHA512 = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{128}$`) })

// MaxTargetLength bounds a target's signed length (a binary or a delta):
// larger is refused as malformed before anything is downloaded.
const MaxTargetLength = 1 << 30

// ValidateTarget checks everything the updater later relies on in a signed
// target, so that no malformed metadata (signed by a careless publisher or
// by a compromised delegated key) reaches the state file or the download
// code: a positive length within MaxTargetLength, a lowercase hex sha256
// (the staging file name and the consistent-snapshot path are built from
// it), well-formed optional sha512, and complete Outpost custom data whose
// name matches its kind, platform and version.
func ValidateTarget(name string, tf tuf.TargetFile) (*Custom, error) {
	if tf.Length <= 0 || tf.Length > MaxTargetLength {
		return nil, fmt.Errorf("%w: %s: length %d (want 1..%d)", ErrBadTarget, name, tf.Length, int64(MaxTargetLength))
	}
	if !hexSHA256().MatchString(tf.Hashes["sha256"]) {
		return nil, fmt.Errorf("%w: %s: hashes.sha256 missing or malformed (%q)", ErrBadTarget, name, tf.Hashes["sha256"])
	}
	if h, ok := tf.Hashes["sha512"]; ok && !hexSHA512().MatchString(h) {
		return nil, fmt.Errorf("%w: %s: hashes.sha512 malformed", ErrBadTarget, name)
	}
	c, err := ParseCustom(tf)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: custom: %v", ErrBadTarget, name, err)
	}
	if !canonicalVersion(c.Version) {
		return nil, fmt.Errorf("%w: %s: custom.version %q is not a canonical semantic version", ErrBadTarget, name, c.Version)
	}
	want := FullTargetName(c.Platform, c.Version)
	if c.Kind == "delta" {
		want = DeltaTargetName(c.Platform, c.From, c.Version)
	}
	if name != want {
		return nil, fmt.Errorf("%w: %s: custom data names %s", ErrBadTarget, name, want)
	}
	return c, nil
}

// choose picks the newest version for platform above running that is not
// bad, and a delta from the running binary (whose sha256 is runningSHA)
// when one exists and useDelta. It returns nil when nothing is newer.
// Targets of this platform that would be candidates but fail
// ValidateTarget are skipped and returned in rejected.
func choose(targets map[string]tuf.TargetFile, platform, running, runningSHA string, st *State, useDelta bool) (best *Plan, rejected []error) {
	prefix := platform + "/outpost-"
	for name, tf := range targets {
		if !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, ".zst") {
			continue
		}
		c, err := ValidateTarget(name, tf)
		if err != nil {
			// Only a target that could be an update is worth reporting.
			if v := strings.TrimSuffix(strings.TrimPrefix(name, prefix), ".zst"); CompareVersions(v, running) > 0 {
				rejected = append(rejected, err)
			}
			continue
		}
		if c.Kind != "full" || c.Platform != platform {
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
		return best, rejected
	}
	name := DeltaTargetName(platform, running, best.Version)
	tf, ok := targets[name]
	if !ok {
		return best, rejected
	}
	c, err := ValidateTarget(name, tf)
	if err != nil {
		return best, append(rejected, err)
	}
	if c.Kind != "delta" || c.FromSHA256 != runningSHA || c.SHA256 != best.Custom.SHA256 || c.Platform != platform {
		return best, rejected
	}
	if tf.Length >= best.File.Length {
		return best, rejected
	}
	return &Plan{Version: best.Version, Kind: "delta", Target: name, Download: tf.Length, Custom: *c, File: tf, FullSize: best.FullSize}, rejected
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
