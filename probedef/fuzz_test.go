package probedef

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse: Parse never panics, errors are *SyntaxError pointing inside
// (or just past) the line, and what parses survives String and Parse
// unchanged.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"p:myprobe do_sys_open dfd=%ax filename=%dx flags=%cx mode=+4($stack)",
		"r:myretprobe do_sys_open $retval",
		"-:grp/myprobe",
		"r100:g.e mod:f+0 $arg3:s32 $retval:symstr",
		"p vfs_read%return $arg* x=+u8(-0x10(%r15)):b3@2/16",
		"j:jp f filename +0(+8(path)):string[2] c=$comm",
		`p 0x1000 \"a" \-0x80 @sym-8:x8[3] @12:symbol %orig_ax:char $stack12`,
		"p f+0x10 # comment",
		"p:bt/rd vfs_read file=file->f_path.dentry->d_name.name:string $arg01->f_flags:x64",
		"r f n=+8($retval->a->b.c):u8[2] $arg2->x:ustring",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		d, err := Parse(line)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %T, want *SyntaxError", err)
			}
			if se.Col < 1 || se.Col > len(line)+2 {
				t.Fatalf("column %d outside line of %d bytes", se.Col, len(line))
			}
			if !strings.Contains(se.Error(), "^ ") {
				t.Fatalf("no caret in %q", se.Error())
			}
			return
		}
		s := d.String()
		d2, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q) ok, but its String %q fails: %v", line, s, err)
		}
		if !reflect.DeepEqual(bare(d), bare(d2)) {
			t.Fatalf("round trip of %q via %q:\n got %#v\nwant %#v", line, s, bare(d2), bare(d))
		}
	})
}
