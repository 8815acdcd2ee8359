// Package buildinfo reports what binary is running: the release version and
// commit stamped at link time, and the Go toolchain, platform and dependency
// versions recorded by the Go linker (runtime/debug.ReadBuildInfo).
//
// Version, Commit and Date are set with
//
//	-ldflags "-X github.com/outpost-edge/outpost/internal/buildinfo.Version=1.4.0 ..."
//
// and default to "dev"/"unknown" for plain `go build`.
package buildinfo

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// Link-time stamps.
var (
	Version = "dev"
	Commit  = "unknown"
	Date    = "unknown"
)

// Info is the full description of the running binary.
type Info struct {
	Version   string            `json:"version"`
	Commit    string            `json:"commit"`
	Date      string            `json:"date"`
	GoVersion string            `json:"go_version"`
	Platform  string            `json:"platform"` // GOOS/GOARCH[/vARM]
	Settings  map[string]string `json:"settings,omitempty"`
	Deps      []Dep             `json:"deps,omitempty"`
}

// Dep is one module linked into the binary.
type Dep struct {
	Path    string `json:"path"`
	Version string `json:"version"`
	Replace string `json:"replace,omitempty"`
}

// Read returns the running binary's Info.
func Read() Info {
	in := Info{Version: Version, Commit: Commit, Date: Date, GoVersion: runtime.Version(), Platform: Platform()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	in.Settings = map[string]string{}
	for _, s := range bi.Settings {
		in.Settings[s.Key] = s.Value
		if s.Key == "vcs.revision" && in.Commit == "unknown" {
			in.Commit = s.Value
		}
		if s.Key == "vcs.time" && in.Date == "unknown" {
			in.Date = s.Value
		}
	}
	for _, d := range bi.Deps {
		dep := Dep{Path: d.Path, Version: d.Version}
		if d.Replace != nil {
			dep.Replace = d.Replace.Path + "@" + d.Replace.Version
		}
		in.Deps = append(in.Deps, dep)
	}
	return in
}

// Platform returns GOOS/GOARCH, with the ARM version for 32-bit ARM.
func Platform() string {
	p := runtime.GOOS + "/" + runtime.GOARCH
	if runtime.GOARCH == "arm" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "GOARM" {
					p += "/v" + strings.TrimSuffix(s.Value, ",softfloat")
				}
			}
		}
	}
	return p
}

// Short is the one-line form printed by `outpost version`.
func (in Info) Short() string {
	return fmt.Sprintf("outpost %s (%s, %s, %s)", in.Version, shortCommit(in.Commit), in.GoVersion, in.Platform)
}

// WriteVerbose writes the multi-line form printed by `outpost version --verbose`.
func (in Info) WriteVerbose(w io.Writer) {
	fmt.Fprintf(w, "version:    %s\n", in.Version)
	fmt.Fprintf(w, "commit:     %s\n", in.Commit)
	fmt.Fprintf(w, "built:      %s\n", in.Date)
	fmt.Fprintf(w, "go:         %s\n", in.GoVersion)
	fmt.Fprintf(w, "platform:   %s\n", in.Platform)
	for _, k := range []string{"CGO_ENABLED", "-trimpath", "-ldflags", "GOAMD64", "GOARM64", "GOARM", "vcs.modified"} {
		if v, ok := in.Settings[k]; ok {
			fmt.Fprintf(w, "build:      %s=%s\n", k, v)
		}
	}
	if len(in.Deps) > 0 {
		fmt.Fprintf(w, "dependencies:\n")
		for _, d := range in.Deps {
			if d.Replace != "" {
				fmt.Fprintf(w, "  %s %s => %s\n", d.Path, d.Version, d.Replace)
			} else {
				fmt.Fprintf(w, "  %s %s\n", d.Path, d.Version)
			}
		}
	}
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}
