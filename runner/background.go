package runner

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hvprobe/hvprobe/bench"
	"github.com/hvprobe/hvprobe/kprobes"
	"github.com/hvprobe/hvprobe/session"
)

func reportBoot(ctx context.Context, s *session.Session, p *printer) {
	if l, err := s.WaitLineSeen(ctx, ""); err == nil {
		p.printf("hvprobe: first console line after %.2fs", l.At.Seconds())
	}
	if l, err := s.WaitLineSeen(ctx, "HVWL: workload"); err == nil {
		p.printf("hvprobe: workload started after %.2fs", l.At.Seconds())
	}
}

// snapshotAt waits for a console line containing marker and snapshots.
func snapshotAt(ctx context.Context, s *session.Session, marker, path string, p *printer) error {
	l, err := s.WaitLineSeen(ctx, marker)
	if err != nil {
		return fmt.Errorf("--snapshot-at: %w", err)
	}
	t0 := time.Now()
	info, err := s.Snapshot(path)
	if err != nil {
		return err
	}
	p.printf("hvprobe: %q after %.2fs; snapshot %s written in %.2fs: %d MiB of RAM, %d MiB on disk, %d vCPUs",
		marker, l.At.Seconds(), path, time.Since(t0).Seconds(), info.MemBytes>>20, info.DiskBytes>>20, info.CPUs)
	return nil
}

// sendScenario hands commands to the mini guest's workload mailbox: at
// once in a restored guest, else when the workload says it serves.
func sendScenario(ctx context.Context, s *session.Session, cmds string, restored bool, p *printer) {
	if !restored {
		if _, err := s.WaitLineSeen(ctx, "HVWL: ready"); err != nil {
			return
		}
	}
	if _, err := bench.NewMailbox(s).Scenario(ctx, cmds); err != nil && ctx.Err() == nil && !strings.Contains(cmds, "poweroff") {
		p.printf("hvprobe: --scenario: %v", err)
	}
}

func printStats(p *printer, m *kprobes.Manager) {
	st := m.Stats()
	p.printf("hvprobe: hits=%d exits-per-hit=%v emulated=%d boosted=%d stepped=%d reentered=%d faults=%d",
		st.Hits, st.ExitsPerHit, st.Emulated, st.Boosted, st.Stepped, st.Reentered, st.Faults)
}
