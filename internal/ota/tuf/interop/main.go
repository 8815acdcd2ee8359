// Command interop checks that go-tuf v2 (the reference Go TUF client)
// accepts a repository written by `outpost release`: it refreshes the
// metadata (following root rotations) and downloads and verifies every
// target. It is a separate module so go-tuf never enters the outpost
// binary or its go.mod.
//
//	outpost release keygen --repo /tmp/r --keys /tmp/k
//	outpost release add --repo /tmp/r --keys /tmp/k --binary outpost --version 1.0.0
//	outpost release rotate --repo /tmp/r --keys /tmp/k --role root
//	cd internal/ota/tuf/interop && go run . /tmp/r
package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

func main() {
	repo := os.Args[1]
	srv := httptest.NewServer(http.FileServer(http.Dir(repo)))
	defer srv.Close()
	root, err := os.ReadFile(repo + "/metadata/1.root.json")
	if err != nil {
		panic(err)
	}
	c, err := config.New(srv.URL+"/metadata", root)
	if err != nil {
		panic(err)
	}
	c.RemoteTargetsURL = srv.URL + "/targets"
	c.LocalMetadataDir, _ = os.MkdirTemp("", "gotuf")
	c.LocalTargetsDir, _ = os.MkdirTemp("", "gotuft")
	c.PrefixTargetsWithHash = true
	u, err := updater.New(c)
	if err != nil {
		panic(err)
	}
	if err := u.Refresh(); err != nil {
		fmt.Println("REFRESH FAILED:", err)
		os.Exit(1)
	}
	tm := u.GetTrustedMetadataSet()
	fmt.Println("go-tuf verified root v", tm.Root.Signed.Version, "timestamp v", tm.Timestamp.Signed.Version, "snapshot v", tm.Snapshot.Signed.Version, "targets v", tm.Targets["targets"].Signed.Version)
	for name := range tm.Targets["targets"].Signed.Targets {
		ti, err := u.GetTargetInfo(name)
		if err != nil {
			panic(err)
		}
		path, _, err := u.DownloadTarget(ti, "", "")
		if err != nil {
			fmt.Println("DOWNLOAD FAILED", name, err)
			os.Exit(1)
		}
		fmt.Println("go-tuf downloaded and verified", name, "->", path)
	}
}
