package guest

import (
	"cmp"
	"slices"
	"strings"
)

// maxSimilar bounds the "did you mean" list.
const maxSimilar = 5

// similar returns up to maxSimilar names close to name: within an edit
// distance of about a third of its length, or extending it (a prefix).
func (t *SymbolTable) similar(name string) []string {
	type cand struct {
		name string
		dist int
	}
	limit := max(2, len(name)/3)
	var cands []cand
	row := make([]int, 0, 64)
	for n := range t.byName {
		if strings.HasPrefix(n, name) && len(n)-len(name) <= 2*limit {
			cands = append(cands, cand{n, len(n) - len(name)})
			continue
		}
		if d := len(n) - len(name); d > limit || -d > limit {
			continue
		}
		if d := editDistance(name, n, limit, &row); d <= limit {
			cands = append(cands, cand{n, d})
		}
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(a.dist, b.dist); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	var out []string
	for _, c := range cands[:min(len(cands), maxSimilar)] {
		out = append(out, c.name)
	}
	return out
}

// editDistance is the Levenshtein distance of a and b, or limit+1 once it
// must exceed limit. row is scratch space.
func editDistance(a, b string, limit int, row *[]int) int {
	r := (*row)[:0]
	for j := 0; j <= len(b); j++ {
		r = append(r, j)
	}
	*row = r
	for i := 1; i <= len(a); i++ {
		prev := r[0]
		r[0] = i
		best := r[0]
		for j := 1; j <= len(b); j++ {
			cur := r[j]
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			r[j] = min(r[j]+1, r[j-1]+1, prev+cost)
			prev = cur
			best = min(best, r[j])
		}
		if best > limit {
			return limit + 1
		}
	}
	return r[len(b)]
}
