package runner

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/hvprobe/hvprobe/probedef"
)

// A record (run --record FILE) is JSON lines, in the one event encoding
// hvprobe has (probedef.FormatJSON):
//
//	{"hvprobe_record":1,"kernel":…,"system_map":…,"system_map_sha256":…,"kaslr_slide":"0x…"}
//	{"def":{"line":…,"group":…,"event":…,"kind":…,"args":[{"name":…,"type":…}],"stack":…}}
//	{"comm":…,"pid":…,…}                      an event, as --format json prints it
//	{"dropped":N}                              at the end, when the writer lost events
//
// A def line comes before its event's first event line. report reads it
// back: the events, typed by their defs, and the map and slide that
// symbolize .sym and stacktrace hist keys as the live run did.
const recordVersion = 1

// recordHeader is a record's first line.
type recordHeader struct {
	Version   int    `json:"hvprobe_record"`
	Kernel    string `json:"kernel"`
	SystemMap string `json:"system_map"`
	MapSHA256 string `json:"system_map_sha256"`
	Slide     string `json:"kaslr_slide"`
}

// recordLine is any record line, told apart by its keys.
type recordLine struct {
	Version *int             `json:"hvprobe_record"`
	Def     *probedef.Schema `json:"def"`
	Dropped *uint64          `json:"dropped"`
	Event   string           `json:"event"`
}

// recorder writes a record. Lines are queued (a printer), so a vCPU does
// not wait for the disk; what the queue cannot take is counted in the
// trailer.
type recorder struct {
	mu   sync.Mutex
	out  *printer
	seen map[*probedef.Def]bool
}

func newRecorder(w io.Writer) *recorder {
	rc := &recorder{out: newPrinter(w), seen: map[*probedef.Def]bool{}}
	rc.out.dropLine = func(n uint64) string { return fmt.Sprintf(`{"dropped":%d}`, n) }
	return rc
}

// header writes the first line: the kernel, its map (with a digest, so
// report knows it is the same file) and the guest's KASLR slide.
func (rc *recorder) header(kernel, mapPath string, slide uint64) error {
	abs, err := filepath.Abs(mapPath)
	if err != nil {
		return err
	}
	sum, err := fileSHA256(abs)
	if err != nil {
		return err
	}
	b, err := json.Marshal(recordHeader{Version: recordVersion, Kernel: kernel, SystemMap: abs, MapSHA256: sum,
		Slide: fmt.Sprintf("%#x", slide)})
	if err != nil {
		return err
	}
	rc.out.printf("%s", b)
	return nil
}

// define writes d's schema once, before its first event.
func (rc *recorder) define(d *probedef.Def) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.defineLocked(d)
}

func (rc *recorder) defineLocked(d *probedef.Def) {
	if rc.seen[d] {
		return
	}
	rc.seen[d] = true
	b, err := json.Marshal(struct {
		Def probedef.Schema `json:"def"`
	}{probedef.SchemaOf(d)})
	if err != nil {
		panic(err) // a Schema is strings and bools
	}
	rc.out.printf("%s", b)
}

// add writes ev, after its definition's schema.
func (rc *recorder) add(ev probedef.Event) {
	b, err := probedef.FormatJSON(ev)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.defineLocked(ev.Def)
	if err != nil {
		rc.out.drop() // FormatJSON fails on no value hvprobe makes
		return
	}
	rc.out.printf("%s", b)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
