package runner

import (
	"context"

	"github.com/hvprobe/hvprobe/session"
)

// inspectAt prints the KASLR placement and the task list once a console
// line containing marker appears.
func inspectAt(ctx context.Context, s *session.Session, marker string, p *printer) {
	if _, err := s.WaitLineSeen(ctx, marker); err != nil {
		return
	}
	in, err := s.Inspect()
	if err != nil {
		p.printf("hvprobe: inspect: %v", err)
		return
	}
	p.printf("hvprobe: KASLR slide %#x, physical offset %#x", in.KASLR.Slide, in.KASLR.PhysOffset)
	p.printf("hvprobe: %d tasks:", len(in.Tasks))
	for _, t := range in.Tasks {
		p.printf("hvprobe:   pid %5d tgid %5d state %#x %s", t.PID, t.TGID, t.State, t.Comm)
	}
}
