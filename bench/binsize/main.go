// Command binsize prints how much of a Go binary each module (or package)
// accounts for: the sizes of the symbols the linker kept in the file (code,
// read-only data, data; not .bss), attributed by symbol name to the module
// that provides the package, as listed in the binary's build info.
//
// Usage: go run ./bench/binsize [-packages] [-top N] [-stripped-size BYTES] BINARY
//
// BINARY must not be stripped (build it without -s -w); bench/binsize.sh
// does that for you and also prints the stripped size. Function metadata in
// .gopclntab, section headers and padding are not attributed to any symbol;
// given the stripped file's size they show as "rest of the stripped file".
//
// The dependency guard (scripts/depguard.sh) uses two more modes:
//
//	-list                 print the guard file: the stripped size, then one
//	                      line per module: path, version, symbol bytes
//	-check FILE           compare with a guard file; exit 1 on a new or
//	                      removed module, a version change, a module that
//	                      grew by more than 32 KiB and 10%, or a stripped
//	                      size more than 256 KiB over the recorded one
package main

import (
	"debug/buildinfo"
	"debug/elf"
	"flag"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
)

func main() {
	byPkg := flag.Bool("packages", false, "aggregate by package instead of module")
	top := flag.Int("top", 25, "rows to print")
	stripped := flag.Int64("stripped-size", 0, "size of the stripped build of the same code, to show what symbols do not cover")
	list := flag.Bool("list", false, "print the dependency guard file (stripped size, then module version bytes)")
	check := flag.String("check", "", "compare with this dependency guard file; exit 1 on a difference that needs review")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: binsize [-packages] [-top N] BINARY")
		os.Exit(2)
	}
	if *list || *check != "" {
		cur, err := measure(flag.Arg(0), *stripped)
		if err != nil {
			fmt.Fprintln(os.Stderr, "binsize:", err)
			os.Exit(1)
		}
		if *list {
			fmt.Print(cur.String())
			return
		}
		if problems, err := guard(*check, cur); err != nil {
			fmt.Fprintln(os.Stderr, "binsize:", err)
			os.Exit(1)
		} else if len(problems) > 0 {
			for _, p := range problems {
				fmt.Println(p)
			}
			os.Exit(1)
		}
		fmt.Printf("%s: dependencies and sizes match %s\n", flag.Arg(0), *check)
		return
	}
	if err := run(flag.Arg(0), *byPkg, *top, *stripped); err != nil {
		fmt.Fprintln(os.Stderr, "binsize:", err)
		os.Exit(1)
	}
}

func run(path string, byPkg bool, top int, stripped int64) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return err
	}
	mods := []string{bi.Main.Path}
	for _, d := range bi.Deps {
		mods = append(mods, d.Path)
	}
	sort.Slice(mods, func(i, j int) bool { return len(mods[i]) > len(mods[j]) }) // nested modules first
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return fmt.Errorf("%s: %w (build without -s -w)", path, err)
	}
	sum := map[string]uint64{}
	var all uint64
	for _, s := range syms {
		if s.Size == 0 || int(s.Section) <= 0 || int(s.Section) >= len(f.Sections) {
			continue
		}
		if f.Sections[s.Section].Type == elf.SHT_NOBITS { // .bss, .noptrbss: no bytes in the file
			continue
		}
		pkg := symbolPackage(s.Name)
		key := pkg
		if !byPkg {
			key = module(pkg, mods)
		}
		sum[key] += s.Size
		all += s.Size
	}
	keys := make([]string, 0, len(sum))
	for k := range sum {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return sum[keys[i]] > sum[keys[j]] })
	var rest uint64
	for i, k := range keys {
		if i >= top {
			rest += sum[k]
			continue
		}
		fmt.Printf("%10d  %7.2f MiB  %s\n", sum[k], mib(sum[k]), k)
	}
	if rest > 0 {
		fmt.Printf("%10d  %7.2f MiB  (%d more)\n", rest, mib(rest), len(keys)-top)
	}
	fmt.Printf("%10d  %7.2f MiB  all symbols\n", all, mib(all))
	if stripped > int64(all) {
		rest := uint64(stripped) - all
		fmt.Printf("%10d  %7.2f MiB  rest of the stripped file (.gopclntab function tables, type links, headers)\n", rest, mib(rest))
	}
	return nil
}

// symbolPackage returns the import path of the package defining a symbol:
// everything before the first "." after the last "/" (generic type
// arguments removed). Linker-made symbols group as "runtime+linker".
func symbolPackage(name string) string {
	if i := strings.IndexByte(name, '['); i >= 0 {
		name = name[:i]
	}
	if strings.HasPrefix(name, "go:") || strings.HasPrefix(name, "type:") || strings.HasPrefix(name, "runtime.") ||
		strings.HasPrefix(name, "_") || !strings.ContainsAny(name, ".") {
		return "runtime+linker"
	}
	slash := strings.LastIndexByte(name, '/')
	dot := strings.IndexByte(name[slash+1:], '.')
	if dot >= 0 {
		name = name[:slash+1+dot]
	}
	// The linker escapes dots in the last path element (yaml%2ev3).
	if p, err := url.PathUnescape(name); err == nil {
		return p
	}
	return name
}

func module(pkg string, mods []string) string {
	if pkg == "runtime+linker" {
		return pkg
	}
	for _, m := range mods {
		if pkg == m || strings.HasPrefix(pkg, m+"/") {
			return m
		}
	}
	return "std"
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
