package config

import (
	"path/filepath"
	"reflect"
	"strings"
)

// IsPathKey reports whether a YAML key names a filesystem path by the
// project's convention: data_dir, dir, path, or any key ending in _dir or
// _file. Keys named this way are resolved by ResolvePaths, so a new path
// field only has to follow the naming convention.
func IsPathKey(key string) bool {
	return key == "dir" || key == "path" || strings.HasSuffix(key, "_dir") || strings.HasSuffix(key, "_file")
}

// ResolvePaths rewrites every relative path in the config tree v (a pointer
// to a struct) against base, the directory of the config file, as most
// daemons do: "data_dir: data" in /etc/outpost/outpost.yaml means
// /etc/outpost/data whatever the working directory. A field is a path when
// it is a non-empty string (or []string) whose YAML key satisfies IsPathKey.
// Absolute paths, and every other field, are left alone. ResolvePaths does
// nothing when base is empty.
func ResolvePaths(v any, base string) {
	if base == "" {
		return
	}
	resolvePaths(reflect.ValueOf(v), base, "")
}

func resolvePaths(v reflect.Value, base, key string) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			resolvePaths(v.Elem(), base, key)
		}
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			if name == "" && !f.Anonymous {
				name = strings.ToLower(f.Name)
			}
			resolvePaths(v.Field(i), base, name)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			resolvePaths(v.Index(i), base, key)
		}
	case reflect.Map:
		// Maps hold user data (labels, env), never paths to resolve.
	case reflect.String:
		if IsPathKey(key) && v.CanSet() {
			if p := v.String(); p != "" && !filepath.IsAbs(p) {
				v.SetString(filepath.Join(base, p))
			}
		}
	}
}
