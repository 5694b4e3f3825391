// An in-memory systemd journal for NVSentinel's syslog monitor: the one stand-in of this program.
//
// It implements syslogmonitor.Journal the way go-systemd's sdjournal does over libsystemd, for the
// calls the monitor makes:
//   - matches: entries match "FIELD=value" terms; terms on the same field are ORed, terms on
//     different fields ANDed, AddDisjunction() ORs the group before it with the one after it
//     (sd_journal_add_match / sd_journal_add_disjunction);
//   - GetData returns "FIELD=value", the whole data object, as sd_journal_get_data does (so the
//     monitor's handlers see "MESSAGE=NVRM: Xid ..."), and an error for a missing field;
//   - SeekTail + Previous lands on the last matching entry, SeekCursor + Next on the entry after
//     the cursor; a cursor names one entry.
//
// Every journal opened from the factory reads the same entries (one node's journal), each with its
// own matches and position, as the monitor opens one sd_journal per check.
//
// A stall detector: when a handler fails on an entry, the monitor neither advances nor moves its
// cursor (processOneEntryAndAdvance returns before journal.Next), so it reads the same entry
// forever and its poll never ends. After stallReads reads of one entry in a row the journal
// records the entry's MESSAGE as stalled and fails the next GetCursor, which makes the monitor
// step past it (recoverFromGetCursorError): the test sees where NVSentinel stalls and can go on.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	syslogmonitor "github.com/nvidia/nvsentinel/health-monitors/syslog-health-monitor/pkg/syslog-monitor"
)

type entry struct {
	cursor string
	fields map[string]string
}

// stallReads: reads of one entry in a row that mean the monitor cannot get past it.
const stallReads = 50

type journalStore struct {
	entries []entry
	bootID  string
	stalls  []string // MESSAGE of each entry a check stalled on
}

func newJournalStore() *journalStore {
	// The monitor compares the journal's boot ID with /proc's, so both must agree.
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		panic(err)
	}

	return &journalStore{bootID: strings.TrimSpace(string(data))}
}

func (s *journalStore) append(fields map[string]string) {
	s.entries = append(s.entries, entry{cursor: fmt.Sprintf("s=compat;i=%x", len(s.entries)+1), fields: fields})
}

// factory hands out journals over one store.
type factory struct{ store *journalStore }

func (f factory) NewJournal() (syslogmonitor.Journal, error) { return f.open(), nil }

func (f factory) NewJournalFromDir(string) (syslogmonitor.Journal, error) { return f.open(), nil }

func (f factory) RequiresFileSystemCheck() bool { return false }

func (f factory) open() *memJournal {
	return &memJournal{store: f.store, pos: -1, groups: [][]string{nil}}
}

type memJournal struct {
	store  *journalStore
	groups [][]string // disjunction groups of "FIELD=value" terms
	pos    int        // index of the current entry; -1 before the first, len after the last
	closed bool
	reads  int  // reads of the current entry in a row
	stuck  bool // the next GetCursor fails, to step past a stalled entry
}

func (j *memJournal) AddMatch(match string) error {
	if !strings.Contains(match, "=") {
		return fmt.Errorf("invalid match %q", match)
	}

	j.groups[len(j.groups)-1] = append(j.groups[len(j.groups)-1], match)

	return nil
}

func (j *memJournal) AddDisjunction() error {
	j.groups = append(j.groups, nil)
	return nil
}

func (j *memJournal) Close() error {
	j.closed = true
	return nil
}

func (j *memJournal) GetBootID() (string, error) { return j.store.bootID, nil }

func (j *memJournal) current() (*entry, error) {
	if j.pos < 0 || j.pos >= len(j.store.entries) {
		return nil, fmt.Errorf("no current entry: cannot assign requested address")
	}

	return &j.store.entries[j.pos], nil
}

func (j *memJournal) GetCursor() (string, error) {
	if j.stuck {
		j.stuck, j.reads = false, 0
		return "", fmt.Errorf("compat: stalled entry skipped")
	}

	e, err := j.current()
	if err != nil {
		return "", err
	}

	return e.cursor, nil
}

func (j *memJournal) GetData(field string) (string, error) {
	e, err := j.current()
	if err != nil {
		return "", err
	}

	j.reads++
	if j.reads == stallReads {
		j.store.stalls = append(j.store.stalls, e.fields["MESSAGE"])
		j.stuck = true
	}

	value, ok := e.fields[field]
	if !ok {
		return "", fmt.Errorf("failed to read message field: no such file or directory")
	}

	return field + "=" + value, nil
}

func (j *memJournal) matches(e *entry) bool {
	anyTerm := false

	for _, group := range j.groups {
		if len(group) == 0 {
			continue
		}

		anyTerm = true
		byField := map[string][]string{}

		for _, term := range group {
			field, value, _ := strings.Cut(term, "=")
			byField[field] = append(byField[field], value)
		}

		all := true

		for field, values := range byField {
			got, ok := e.fields[field]
			if !ok || !contains(values, got) {
				all = false
				break
			}
		}

		if all {
			return true
		}
	}

	return !anyTerm
}

func contains(values []string, v string) bool {
	for _, candidate := range values {
		if candidate == v {
			return true
		}
	}

	return false
}

func (j *memJournal) Next() (uint64, error) {
	for p := j.pos + 1; p < len(j.store.entries); p++ {
		if j.matches(&j.store.entries[p]) {
			j.pos, j.reads = p, 0
			return 1, nil
		}
	}

	j.pos, j.reads = len(j.store.entries), 0

	return 0, io.EOF
}

func (j *memJournal) Previous() (uint64, error) {
	for p := j.pos - 1; p >= 0; p-- {
		if j.matches(&j.store.entries[p]) {
			j.pos, j.reads = p, 0
			return 1, nil
		}
	}

	j.pos, j.reads = -1, 0

	return 0, io.EOF
}

func (j *memJournal) SeekCursor(cursor string) error {
	for i := range j.store.entries {
		if j.store.entries[i].cursor == cursor {
			j.pos, j.reads = i, 0
			return nil
		}
	}

	return fmt.Errorf("cursor not found: %s", cursor)
}

func (j *memJournal) SeekHead() error {
	j.pos = -1
	return nil
}

func (j *memJournal) SeekRealtimeUsec(uint64) error { return j.SeekHead() }

func (j *memJournal) SeekTail() error {
	j.pos = len(j.store.entries)
	return nil
}
