package main

import (
	"bufio"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// footprint is what the dependency guard records for one binary.
type footprint struct {
	stripped int64
	mods     map[string]modSize // by module path
}

type modSize struct {
	version string
	bytes   uint64
}

func (f footprint) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Dependency guard (scripts/depguard.sh): regenerate with scripts/depguard.sh -update\n")
	fmt.Fprintf(&b, "# and say in the commit what a new or grown dependency buys.\n")
	fmt.Fprintf(&b, "stripped %d\n", f.stripped)
	paths := make([]string, 0, len(f.mods))
	for p := range f.mods {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		m := f.mods[p]
		fmt.Fprintf(&b, "%s %s %d\n", p, m.version, m.bytes)
	}
	return b.String()
}

// measure attributes the symbol bytes of an unstripped binary to modules.
func measure(path string, stripped int64) (footprint, error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return footprint{}, err
	}
	fp := footprint{stripped: stripped, mods: map[string]modSize{}}
	mods := []string{bi.Main.Path}
	fp.mods[bi.Main.Path] = modSize{version: "(main)"}
	for _, d := range bi.Deps {
		mods = append(mods, d.Path)
		v := d.Version
		if d.Replace != nil {
			v = d.Replace.Path
			if d.Replace.Version != "" {
				v += "@" + d.Replace.Version
			}
		}
		fp.mods[d.Path] = modSize{version: v}
	}
	sort.Slice(mods, func(i, j int) bool { return len(mods[i]) > len(mods[j]) })
	f, err := elf.Open(path)
	if err != nil {
		return footprint{}, err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return footprint{}, fmt.Errorf("%s: %w (build without -s -w)", path, err)
	}
	for _, s := range syms {
		if s.Size == 0 || int(s.Section) <= 0 || int(s.Section) >= len(f.Sections) || f.Sections[s.Section].Type == elf.SHT_NOBITS {
			continue
		}
		m := module(symbolPackage(s.Name), mods)
		if m == "std" || m == "runtime+linker" {
			continue
		}
		ms := fp.mods[m]
		ms.bytes += s.Size
		fp.mods[m] = ms
	}
	return fp, nil
}

func readFootprint(path string) (footprint, error) {
	file, err := os.Open(path)
	if err != nil {
		return footprint{}, err
	}
	defer file.Close()
	fp := footprint{mods: map[string]modSize{}}
	sc := bufio.NewScanner(file)
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		f := strings.Fields(t)
		switch {
		case len(f) == 2 && f[0] == "stripped":
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return fp, fmt.Errorf("%s:%d: stripped size: %w", path, line, err)
			}
			fp.stripped = n
		case len(f) == 3:
			n, err := strconv.ParseUint(f[2], 10, 64)
			if err != nil {
				return fp, fmt.Errorf("%s:%d: bytes of %s: %w", path, line, f[0], err)
			}
			fp.mods[f[0]] = modSize{version: f[1], bytes: n}
		default:
			return fp, fmt.Errorf("%s:%d: want \"stripped BYTES\" or \"MODULE VERSION BYTES\", got %q", path, line, t)
		}
	}
	return fp, sc.Err()
}

// guard compares the current footprint with the recorded one and returns
// every difference that needs a person to look at it.
func guard(path string, cur footprint) ([]string, error) {
	old, err := readFootprint(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for p, m := range cur.mods {
		o, ok := old.mods[p]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("new dependency %s %s (+%d bytes)", p, m.version, m.bytes))
		case o.version != m.version:
			out = append(out, fmt.Sprintf("dependency %s changed version %s -> %s", p, o.version, m.version))
		case m.version != "(main)" && m.bytes > o.bytes+32<<10 && m.bytes > o.bytes+o.bytes/10:
			out = append(out, fmt.Sprintf("dependency %s grew %d -> %d bytes", p, o.bytes, m.bytes))
		}
	}
	for p, o := range old.mods {
		if _, ok := cur.mods[p]; !ok {
			out = append(out, fmt.Sprintf("dependency %s %s is gone", p, o.version))
		}
	}
	if cur.stripped > old.stripped+256<<10 {
		out = append(out, fmt.Sprintf("stripped binary grew %d -> %d bytes (+%d KiB)", old.stripped, cur.stripped, (cur.stripped-old.stripped)>>10))
	}
	sort.Strings(out)
	if len(out) > 0 {
		out = append(out, "review the change, then record it: scripts/depguard.sh -update")
	}
	return out, nil
}
