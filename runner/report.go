package runner

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/hvprobe/hvprobe/guest"
	"github.com/hvprobe/hvprobe/probedef"
)

// Report is `hvprobe report`: the events of file, which a run's
// --record wrote, through the same filters, hists and formats as the live run
// (c.Filters, c.Hists, c.Format, c.Events, c.Perfetto, c.Count). The
// whole file is read and checked before anything is printed; c.SystemMap,
// when given, replaces the map the record names for .sym and stacktrace
// keys.
func Report(c *Config, file string) error {
	r := &run{cfg: c, status: newPrinter(os.Stderr)}
	r.onClose(r.status.close)
	defer r.close()
	var bad Refusals
	no := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	c.checkOutput(no)
	if st, err := os.Stat(file); err != nil {
		no("%v", err)
	} else if !st.Mode().IsRegular() {
		no("%s: not a regular file", file)
	}
	if len(bad) > 0 {
		return bad
	}
	rec, err := readRecord(file, nil)
	if err != nil {
		return err
	}
	an, badFlags := newAnalysis(rec.defs, c.Filters, c.Hists, false)
	if len(badFlags) > 0 {
		for _, b := range badFlags {
			fmt.Fprintln(os.Stderr, b)
		}
		return refused("%d --filter or --hist flag(s) refused; nothing was reported", len(badFlags))
	}
	r.an = an
	if len(c.Hists) > 0 {
		syms, err := rec.symbols(c.SystemMap)
		if err != nil {
			return err
		}
		an.Symbolize(syms)
	}
	if err := r.openOutputs(); err != nil {
		return err
	}
	if _, err := readRecord(file, r.emit); err != nil {
		return err // the file changed under us
	}
	r.status.printf("hvprobe: report: %d events of %d definitions, recorded on %s", rec.events, len(rec.defs), rec.header.Kernel)
	if rec.truncated {
		r.status.printf("hvprobe: report: %s ends in an incomplete line (the recording was cut short); it was skipped", file)
	}
	if rec.dropped > 0 {
		r.status.printf("hvprobe: report: the recording lost %d events (its writer could not keep up)", rec.dropped)
	}
	return nil
}

// record is what readRecord found in a record file.
type record struct {
	header    recordHeader
	defs      []*probedef.Def
	byName    map[string]*probedef.Def // GROUP/EVENT: the first definition
	events    int
	dropped   uint64
	truncated bool // the last line has no newline and does not parse
}

// maxRecordErrors bounds the bad lines reported from one file.
const maxRecordErrors = 10

// readRecord reads a record file, handing each event to emit (nil to
// check the file only). A bad line is a refusal naming the file and
// line; a last line without its newline that does not parse is what an
// interrupted recording leaves, and is skipped.
func readRecord(path string, emit func(probedef.Event)) (*record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, refused("%v", err)
	}
	defer f.Close()
	rec := &record{byName: map[string]*probedef.Def{}}
	lookup := func(group, event string) (*probedef.Def, error) {
		if d, ok := rec.byName[group+"/"+event]; ok {
			return d, nil
		}
		return nil, fmt.Errorf("event %s/%s has no def line before it", group, event)
	}
	var bad Refusals
	br := bufio.NewReaderSize(f, 1<<20)
	for n := 1; len(bad) < maxRecordErrors; n++ {
		line, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		complete := bytes.HasSuffix(line, []byte("\n"))
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			if err == io.EOF {
				break
			}
			continue
		}
		if lerr := rec.line(n, line, lookup, emit); lerr != nil {
			if !complete {
				rec.truncated = true
				break
			}
			bad = append(bad, fmt.Sprintf("%s:%d: %v", path, n, lerr))
		}
		if err == io.EOF {
			break
		}
	}
	if len(bad) == 0 && rec.header.Version == 0 {
		bad = append(bad, fmt.Sprintf("%s: not an hvprobe record: it has no header line", path))
	}
	if len(bad) > 0 {
		return nil, bad
	}
	return rec, nil
}

// line takes one record line: the header first, then defs, events and
// the trailer.
func (rec *record) line(n int, line []byte, lookup func(string, string) (*probedef.Def, error), emit func(probedef.Event)) error {
	var l recordLine
	if err := json.Unmarshal(line, &l); err != nil {
		return err
	}
	switch {
	case n == 1:
		if l.Version == nil {
			return errors.New("not an hvprobe record: the first line is no header")
		}
		if *l.Version != recordVersion {
			return fmt.Errorf("record format %d; this hvprobe reads %d", *l.Version, recordVersion)
		}
		return json.Unmarshal(line, &rec.header)
	case l.Def != nil:
		d, err := l.Def.Def()
		if err != nil {
			return err
		}
		rec.defs = append(rec.defs, d)
		if _, ok := rec.byName[d.Group+"/"+d.Event]; !ok {
			rec.byName[d.Group+"/"+d.Event] = d
		}
	case l.Dropped != nil:
		rec.dropped += *l.Dropped
	case l.Event != "":
		ev, err := probedef.ParseJSON(line, lookup)
		if err != nil {
			return err
		}
		rec.events++
		if emit != nil {
			emit(ev)
		}
	default:
		return errors.New("neither a def, an event nor a trailer")
	}
	return nil
}

// symbols is the record's System.map, slid as the guest was, for hist
// keys: mapPath if given (it must be the same file, by its digest),
// else the path the record names. Without a map, keys print as
// addresses, and a status line says so.
func (rec *record) symbols(mapPath string) (probedef.Symbols, error) {
	given := mapPath != ""
	if !given {
		mapPath = rec.header.SystemMap
	}
	sum, err := fileSHA256(mapPath)
	switch {
	case err != nil && given:
		return nil, refused("--system-map: %v", err)
	case err != nil:
		fmt.Fprintf(os.Stderr, "hvprobe: report: %v: .sym and stacktrace keys print as addresses (give --system-map)\n", err)
		return nil, nil
	case sum != rec.header.MapSHA256:
		return nil, refused("%s is not the System.map the record was made with (sha256 %s, not %s)", mapPath, sum, rec.header.MapSHA256)
	}
	f, err := os.Open(mapPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := guest.ParseSystemMap(f)
	if err != nil {
		return nil, refused("%s: %v", mapPath, err)
	}
	slide, err := strconv.ParseUint(strings.TrimPrefix(rec.header.Slide, "0x"), 16, 64)
	if err != nil {
		return nil, refused("record header: kaslr_slide: %v", err)
	}
	return mapSymbols{t.Slid(slide)}, nil
}

// mapSymbols is a System.map as probedef.Symbols.
type mapSymbols struct{ t *guest.SymbolTable }

func (m mapSymbols) Address(name string) (uint64, error) { return m.t.At(name, 0) }
func (m mapSymbols) Format(addr uint64) string           { return m.t.FormatAddr(addr) }
