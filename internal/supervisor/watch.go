package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/outpost-edge/outpost/internal/supervisor/recipe"
)

// debounce is how long the watcher waits after the last change before
// reloading, so an editor's write-rename-chmod sequence is one reload.
const debounce = 200 * time.Millisecond

type watcher struct {
	w    *fsnotify.Watcher
	done chan struct{}
}

// watch reloads recipes when recipe files in dir are created, written,
// renamed or removed. The directory itself is watched (not the files), so
// editors that replace files by rename are seen.
func (s *Supervisor) watch(dir string) (*watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	if err := fw.Add(dir); err != nil {
		fw.Close()
		return nil, err
	}
	// Component subdirectories (DIR/NAME/recipe.yaml) are watched too.
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				fw.Add(filepath.Join(dir, e.Name()))
			}
		}
	}
	w := &watcher{w: fw, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var timer *time.Timer
		var fire <-chan time.Time
		for {
			select {
			case ev, ok := <-fw.Events:
				if !ok {
					return
				}
				if ev.Op == fsnotify.Chmod {
					continue
				}
				inSub := filepath.Dir(ev.Name) != filepath.Clean(dir)
				switch {
				case !inSub && ev.Op&fsnotify.Create != 0 && isDir(ev.Name):
					// A new component subdirectory.
					fw.Add(ev.Name)
				case !inSub && recipe.IsRecipeFile(filepath.Base(ev.Name)):
				case inSub && recipe.IsRecipeFile(filepath.Base(ev.Name)):
				case !inSub && ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0:
					// Perhaps a component subdirectory went away.
				default:
					continue
				}
				if timer == nil {
					timer = time.NewTimer(debounce)
				} else {
					timer.Reset(debounce)
				}
				fire = timer.C
			case err, ok := <-fw.Errors:
				if !ok {
					return
				}
				s.log.Warn("recipe watcher", "err", err)
			case <-fire:
				fire = nil
				s.log.Info("recipes changed; reloading", "dir", dir)
				if err := s.Reload(context.Background()); err != nil {
					s.log.Error("reload recipes", "err", err)
				}
			}
		}
	}()
	return w, nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func (w *watcher) close() {
	w.w.Close()
	<-w.done
}
