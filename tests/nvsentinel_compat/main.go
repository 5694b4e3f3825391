// nvsentinel-decide runs NVIDIA NVSentinel's own code over kernel-log records and prints what it
// decides, so that the collection's XID catalog can be compared with it (tests/integration/
// test_nvsentinel_decisions.py). Nothing of NVSentinel is copied: its modules are required from the
// source directory (NVSENTINEL_SRC) through replace directives, see build.sh.
//
// What runs, per scenario (one simulated node):
//   - syslog-health-monitor's SyslogMonitor (pkg/syslog-monitor), with the checks and the
//     cancellation rules the chart configures, reading a journal (journal.go: the only stand-in)
//     whose entries carry the fields journald would store for each record; it polls the journal
//     once per injection, as its --polling-interval loop does;
//   - the health events it publishes go to platform-connectors' own gRPC server handler
//     (pkg/server), its ring buffer and its Kubernetes connector (pkg/connectors/kubernetes),
//     which writes node conditions and Events through client-go's fake clientset.
//
// Between injections the node's conditions are put back as they were after start-up, as a drill's
// cleanup does; the monitor keeps its state, as the node's monitor does.
//
// Input (stdin, JSON): {"node", "checks", "cancellations_toml", "max_condition_message_length",
// "compacted_message_length", "scenarios": [{"name", "metadata" (gpu_metadata.json content or
// null), "injections": [{"id", "entries": [{journal field: value}]}]}]}.
// Output (stdout, JSON): per scenario the start-up result and one result per injection: the health
// events, the node's conditions afterwards and the Events written.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	pb "github.com/nvidia/nvsentinel/data-models/pkg/protos"
	"github.com/nvidia/nvsentinel/health-monitors/syslog-health-monitor/pkg/cancellation"
	syslogmonitor "github.com/nvidia/nvsentinel/health-monitors/syslog-health-monitor/pkg/syslog-monitor"
	k8sconnector "github.com/nvidia/nvsentinel/platform-connectors/pkg/connectors/kubernetes"
	"github.com/nvidia/nvsentinel/platform-connectors/pkg/ringbuffer"
	"github.com/nvidia/nvsentinel/platform-connectors/pkg/server"
)

// As in syslog-health-monitor's main.go.
const (
	agentName      = "syslog-health-monitor"
	componentClass = "GPU"
	journalPath    = "/nvsentinel/var/log/journal/"
)

type input struct {
	Node                      string     `json:"node"`
	Checks                    []string   `json:"checks"`
	CancellationsTOML         string     `json:"cancellations_toml"`
	MaxConditionMessageLength int64      `json:"max_condition_message_length"`
	CompactedMessageLength    int64      `json:"compacted_message_length"`
	Scenarios                 []scenario `json:"scenarios"`
}

type scenario struct {
	Name       string          `json:"name"`
	Metadata   json.RawMessage `json:"metadata"`
	Injections []injection     `json:"injections"`
}

type injection struct {
	ID      string              `json:"id"`
	Entries []map[string]string `json:"entries"`
}

type entity struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type healthEvent struct {
	Agent             string   `json:"agent"`
	CheckName         string   `json:"check_name"`
	ComponentClass    string   `json:"component_class"`
	IsFatal           bool     `json:"is_fatal"`
	IsHealthy         bool     `json:"is_healthy"`
	RecommendedAction string   `json:"recommended_action"`
	ErrorCode         []string `json:"error_code"`
	Entities          []entity `json:"entities"`
	Message           string   `json:"message"`
}

type condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type k8sEvent struct {
	Namespace       string `json:"namespace"`
	Type            string `json:"type"`
	Reason          string `json:"reason"`
	Message         string `json:"message"`
	InvolvedKind    string `json:"involved_kind"`
	InvolvedName    string `json:"involved_name"`
	SourceComponent string `json:"source_component"`
}

type result struct {
	ID           string        `json:"id"`
	HealthEvents []healthEvent `json:"health_events"`
	Conditions   []condition   `json:"conditions"`
	Events       []k8sEvent    `json:"events"`
	// MESSAGE of each entry a check could not get past (see journal.go).
	Stalled []string `json:"stalled"`
}

type scenarioResult struct {
	Name       string   `json:"name"`
	Startup    result   `json:"startup"`
	Injections []result `json:"injections"`
}

// connector is the path from the monitor's gRPC client to the node object: platform-connectors'
// server handler, a ring buffer and the Kubernetes connector, re-attached for every poll so that a
// poll's writes are complete when it returns.
type connector struct {
	srv       *server.PlatformConnectorServer
	clientset *fake.Clientset
	cfg       k8sconnector.K8sConnectorConfig
	events    []healthEvent
	buffer    *ringbuffer.RingBuffer
	done      chan struct{}
}

func (c *connector) HealthEventOccurredV1(ctx context.Context, in *pb.HealthEvents,
	_ ...grpc.CallOption) (*emptypb.Empty, error) {
	for _, e := range in.GetEvents() {
		c.events = append(c.events, toHealthEvent(e))
	}

	return c.srv.HealthEventOccurredV1(ctx, in)
}

var buffers int

func (c *connector) start() {
	ctx := context.Background()
	// Each ring buffer registers metrics under its own name.
	buffers++
	c.buffer = ringbuffer.NewRingBuffer(fmt.Sprintf("compat_%d", buffers), ctx)
	server.InitializeAndAttachRingBufferForConnectors(c.buffer)
	kc := k8sconnector.NewK8sConnector(c.clientset, c.buffer, make(chan struct{}), ctx, c.cfg)
	c.done = make(chan struct{})

	go func() {
		kc.FetchAndProcessHealthMetric(ctx)
		close(c.done)
	}()
}

// finish waits until the connector has written everything published since start.
func (c *connector) finish() {
	c.buffer.ShutDownHealthMetricQueue()
	<-c.done
}

func toHealthEvent(e *pb.HealthEvent) healthEvent {
	out := healthEvent{
		Agent: e.GetAgent(), CheckName: e.GetCheckName(), ComponentClass: e.GetComponentClass(),
		IsFatal: e.GetIsFatal(), IsHealthy: e.GetIsHealthy(), RecommendedAction: e.GetRecommendedAction().String(),
		ErrorCode: e.GetErrorCode(), Message: e.GetMessage(), Entities: []entity{},
	}
	if out.ErrorCode == nil {
		out.ErrorCode = []string{}
	}

	for _, en := range e.GetEntitiesImpacted() {
		out.Entities = append(out.Entities, entity{Type: en.GetEntityType(), Value: en.GetEntityValue()})
	}

	return out
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4})))

	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail("reading the input: %v", err)
	}

	work, err := os.MkdirTemp("", "nvsentinel-decide-")
	if err != nil {
		fail("%v", err)
	}
	defer os.RemoveAll(work)

	cancellationsPath := filepath.Join(work, "cancellations.toml")
	if err := os.WriteFile(cancellationsPath, []byte(in.CancellationsTOML), 0o600); err != nil {
		fail("%v", err)
	}

	// As syslog-health-monitor's main.go loads and validates them.
	cancellations, err := cancellation.LoadConfig(cancellationsPath)
	if err != nil {
		fail("cancellations: %v", err)
	}

	if err := cancellation.ValidateSupportedChecks(cancellations, syslogmonitor.CancellationSupportedChecks); err != nil {
		fail("cancellations: %v", err)
	}

	if err := cancellation.ValidateAgainstEnabledChecks(cancellations, in.Checks); err != nil {
		fail("cancellations: %v", err)
	}

	out := make([]scenarioResult, 0, len(in.Scenarios))

	for i, sc := range in.Scenarios {
		res, err := runScenario(in, sc, cancellations, filepath.Join(work, fmt.Sprintf("scenario-%d", i)))
		if err != nil {
			fail("scenario %s: %v", sc.Name, err)
		}

		out = append(out, res)
	}

	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")

	if err := enc.Encode(map[string]any{"scenarios": out}); err != nil {
		fail("%v", err)
	}
}

// checkDefinitions are the checks as syslog-health-monitor's main.go builds them from --checks:
// the kernel-origin ones read only _TRANSPORT=kernel entries ("-k").
func checkDefinitions(names []string) []syslogmonitor.CheckDefinition {
	kernelOrigin := map[string]bool{
		syslogmonitor.XIDErrorCheck: true, syslogmonitor.SXIDErrorCheck: true,
		syslogmonitor.GPUFallenOffCheck: true, syslogmonitor.NICDriverErrorCheck: true,
	}
	checks := make([]syslogmonitor.CheckDefinition, 0, len(names))

	for _, name := range names {
		check := syslogmonitor.CheckDefinition{Name: name, JournalPath: journalPath}
		if kernelOrigin[name] {
			check.Tags = []string{"-k"}
		}

		checks = append(checks, check)
	}

	return checks
}

func runScenario(in input, sc scenario, cancellations *cancellation.Config, dir string) (scenarioResult, error) {
	res := scenarioResult{Name: sc.Name}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}

	metadataPath := filepath.Join(dir, "gpu_metadata.json") // absent: the node has no GPU metadata
	if len(sc.Metadata) > 0 && string(sc.Metadata) != "null" {
		if err := os.WriteFile(metadataPath, sc.Metadata, 0o600); err != nil {
			return res, err
		}
	}

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: in.Node}}
	pc := &connector{
		srv:       &server.PlatformConnectorServer{}, // the chart's pipeline has every transformer disabled
		clientset: fake.NewClientset(node),
		cfg: k8sconnector.K8sConnectorConfig{
			MaxNodeConditionMessageLength: in.MaxConditionMessageLength,
			CompactedHealthEventMsgLen:    in.CompactedMessageLength,
		},
	}
	store := newJournalStore()
	// A booted node's journal is never empty; the monitor starts reading at its tail.
	store.append(map[string]string{"MESSAGE": "Linux version 6.1.0 (compat)", "_TRANSPORT": "kernel",
		"SYSLOG_IDENTIFIER": "kernel", "PRIORITY": "5", "SYSLOG_FACILITY": "0"})

	// Start-up: a monitor without state publishes one healthy event per check.
	pc.start()

	monitor, err := syslogmonitor.NewSyslogMonitorWithFactory(in.Node, checkDefinitions(in.Checks), pc, agentName,
		componentClass, "1s", filepath.Join(dir, "state.json"), factory{store: store}, "", metadataPath,
		pb.ProcessingStrategy_EXECUTE_REMEDIATION, filepath.Join(dir, "nic-driver.toml"), filepath.Join(dir, "sys"),
		cancellations, "", 2*time.Hour)
	if err != nil {
		return res, err
	}

	if err := monitor.Run(); err != nil {
		return res, fmt.Errorf("first poll: %w", err)
	}

	pc.finish()

	baseline, err := pc.clientset.CoreV1().Nodes().Get(context.Background(), in.Node, metav1.GetOptions{})
	if err != nil {
		return res, err
	}

	if res.Startup, err = collect("startup", pc, store); err != nil {
		return res, err
	}

	for _, inj := range sc.Injections {
		for _, fields := range inj.Entries {
			store.append(fields)
		}

		pc.events = nil
		pc.start()

		if err := monitor.Run(); err != nil {
			return res, fmt.Errorf("injection %s: %w", inj.ID, err)
		}

		pc.finish()

		r, err := collect(inj.ID, pc, store)
		if err != nil {
			return res, err
		}

		res.Injections = append(res.Injections, r)

		if err := reset(pc.clientset, baseline); err != nil {
			return res, err
		}
	}

	return res, nil
}

// collect reads what the connector wrote, the node's conditions and every Event, and the stalls.
func collect(id string, pc *connector, store *journalStore) (result, error) {
	ctx := context.Background()
	r := result{ID: id, HealthEvents: pc.events, Conditions: []condition{}, Events: []k8sEvent{},
		Stalled: append([]string{}, store.stalls...)}
	store.stalls = nil

	if r.HealthEvents == nil {
		r.HealthEvents = []healthEvent{}
	}

	node, err := pc.clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return r, err
	}

	for _, n := range node.Items {
		for _, c := range n.Status.Conditions {
			r.Conditions = append(r.Conditions, condition{Type: string(c.Type), Status: string(c.Status),
				Reason: c.Reason, Message: c.Message})
		}
	}

	events, err := pc.clientset.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return r, err
	}

	for _, e := range events.Items {
		r.Events = append(r.Events, k8sEvent{Namespace: e.Namespace, Type: e.Type, Reason: e.Reason,
			Message: e.Message, InvolvedKind: e.InvolvedObject.Kind, InvolvedName: e.InvolvedObject.Name,
			SourceComponent: e.Source.Component})
	}

	return r, nil
}

// reset puts the node's conditions back as they were after start-up and deletes every Event.
func reset(clientset *fake.Clientset, baseline *corev1.Node) error {
	ctx := context.Background()

	node, err := clientset.CoreV1().Nodes().Get(ctx, baseline.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}

	node.Status.Conditions = baseline.Status.Conditions
	if _, err := clientset.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return err
	}

	events, err := clientset.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}

	for _, e := range events.Items {
		if err := clientset.CoreV1().Events(e.Namespace).Delete(ctx, e.Name, metav1.DeleteOptions{}); err != nil {
			return err
		}
	}

	return nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nvsentinel-decide: "+format+"\n", args...)
	os.Exit(1)
}
