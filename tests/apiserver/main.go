// Command kube-apiserver-test runs a real, upstream kube-apiserver in-process,
// backed by an embedded etcd, on loopback only. It is a test fixture for the
// redis-node-tuner test suite; see README.md for usage.
//
//	kube-apiserver-test -dir DIR [-port N] [-- extra kube-apiserver flags...]
//
// It writes into DIR: etcd/ (data), certs/apiserver.{crt,key} (self-signed
// serving cert, leaf + CA), ca.crt, sa.key (ServiceAccount signing key),
// admin.token, tokens.csv, state.json (ports), admin.kubeconfig and, once
// /readyz is ok, ready (containing the URL). On readiness it prints
// "READY https://127.0.0.1:PORT" on stdout. SIGTERM/SIGINT stop it cleanly; it
// can be restarted on the same DIR (and the same port) and keeps its data.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // for timeZone support in CronJob, as upstream main

	"go.etcd.io/etcd/server/v3/embed"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // as upstream main
	_ "k8s.io/component-base/metrics/prometheus/version"  // as upstream main
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const (
	loopback         = "127.0.0.1"
	serviceCIDR      = "10.0.0.0/24"
	serviceIP        = "10.0.0.1" // first IP of serviceCIDR: the "kubernetes" Service
	saIssuer         = "https://kubernetes.default.svc.cluster.local"
	shutdownDeadline = 60 * time.Second
	readyDeadline    = 5 * time.Minute
)

// state persists the ports across restarts of the same DIR.
type state struct {
	APIServerPort int `json:"apiserverPort"`
	EtcdClient    int `json:"etcdClientPort"`
	EtcdPeer      int `json:"etcdPeerPort"`
}

func main() {
	os.Exit(run())
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kube-apiserver-test: "+format+"\n", args...)
}

func run() int {
	dirFlag := flag.String("dir", "", "work dir (etcd data, certs, keys, tokens, kubeconfig); created if missing; required")
	portFlag := flag.Int("port", 0, "apiserver secure port on 127.0.0.1; 0 = the port used last time in -dir if free, else a free one")
	etcdLog := flag.String("etcd-log-level", "error", "embedded etcd log level (debug, info, warn, error)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s -dir DIR [-port N] [-- extra kube-apiserver flags]\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *dirFlag == "" {
		flag.Usage()
		return 2
	}
	extra := flag.Args()

	// Catch signals from the very start; the apiserver installs its own
	// handler too (genericapiserver.SetupSignalContext), both are notified.
	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGTERM, syscall.SIGINT)

	dir, err := filepath.Abs(*dirFlag)
	if err != nil {
		logf("%v", err)
		return 1
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		logf("%v", err)
		return 1
	}
	readyFile := filepath.Join(dir, "ready")
	_ = os.Remove(readyFile) // stale from a previous run
	defer os.Remove(readyFile)

	st := loadState(dir)
	if st.APIServerPort, err = choosePort(*portFlag, st.APIServerPort); err != nil {
		logf("apiserver port: %v", err)
		return 1
	}
	if st.EtcdClient, err = choosePort(0, st.EtcdClient); err != nil {
		logf("etcd client port: %v", err)
		return 1
	}
	if st.EtcdPeer, err = choosePort(0, st.EtcdPeer); err != nil {
		logf("etcd peer port: %v", err)
		return 1
	}
	if err := writeJSON(filepath.Join(dir, "state.json"), st); err != nil {
		logf("%v", err)
		return 1
	}
	serverURL := fmt.Sprintf("https://%s:%d", loopback, st.APIServerPort)

	// Credentials and kubeconfig: written before anything starts.
	certDir := filepath.Join(dir, "certs")
	caPEM, err := ensureServingCert(certDir)
	if err != nil {
		logf("serving cert: %v", err)
		return 1
	}
	if err := writeFileAtomic(filepath.Join(dir, "ca.crt"), caPEM, 0o644); err != nil {
		logf("%v", err)
		return 1
	}
	token, err := ensureAdminToken(dir)
	if err != nil {
		logf("admin token: %v", err)
		return 1
	}
	saKey, err := ensureSAKey(dir)
	if err != nil {
		logf("service account key: %v", err)
		return 1
	}
	if err := writeKubeconfig(filepath.Join(dir, "admin.kubeconfig"), serverURL, caPEM, token); err != nil {
		logf("kubeconfig: %v", err)
		return 1
	}

	// etcd
	etcd, err := startEtcd(filepath.Join(dir, "etcd"), st.EtcdClient, st.EtcdPeer, *etcdLog)
	if err != nil {
		logf("etcd: %v", err)
		return 1
	}
	stopEtcd := func() {
		etcd.Close()
		logf("etcd stopped")
	}
	select {
	case <-etcd.Server.ReadyNotify():
	case err := <-etcd.Err():
		logf("etcd failed: %v", err)
		stopEtcd()
		return 1
	case s := <-sigCh:
		logf("got %v while etcd was starting", s)
		stopEtcd()
		return 0
	case <-time.After(2 * time.Minute):
		logf("etcd did not become ready")
		stopEtcd()
		return 1
	}
	etcdURL := fmt.Sprintf("http://%s:%d", loopback, st.EtcdClient)
	logf("etcd ready at %s (data %s)", etcdURL, filepath.Join(dir, "etcd"))

	// kube-apiserver, upstream command, in-process.
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + loopback,
		"--advertise-address=" + loopback,
		"--secure-port=" + strconv.Itoa(st.APIServerPort),
		"--cert-dir=" + certDir,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--endpoint-reconciler-type=none",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,ValidatingAdmissionPolicy",
		"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
		"--service-account-issuer=" + saIssuer,
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--profiling=false",
	}
	args = append(args, extra...)
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(args)
	apiDone := make(chan int, 1)
	go func() { apiDone <- cli.Run(cmd) }()

	readyCtx, cancelReady := context.WithCancel(context.Background())
	defer cancelReady()
	readyCh := make(chan error, 1)
	go func() { readyCh <- waitReady(readyCtx, serverURL, caPEM, token) }()

	shutdown := func(code int) int {
		cancelReady()
		select {
		case c := <-apiDone:
			logf("kube-apiserver exited (code %d)", c)
		case <-time.After(shutdownDeadline):
			logf("kube-apiserver did not stop within %v", shutdownDeadline)
			code = 1
		}
		_ = os.Remove(readyFile)
		stopEtcd()
		return code
	}

	failed := 0
	for {
		select {
		case err := <-readyCh:
			if err != nil {
				logf("kube-apiserver not ready: %v", err)
				// Stop the apiserver the same way a signal would.
				failed = 1
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
				continue
			}
			if err := writeFileAtomic(readyFile, []byte(serverURL+"\n"), 0o644); err != nil {
				logf("%v", err)
			}
			fmt.Fprintf(os.Stdout, "READY %s\n", serverURL)
		case c := <-apiDone:
			logf("kube-apiserver exited unexpectedly (code %d)", c)
			if c == 0 {
				c = 1
			}
			apiDone <- c // for shutdown()
			return shutdown(c)
		case s := <-sigCh:
			logf("got %v, shutting down", s)
			return shutdown(failed)
		case err := <-etcd.Err():
			logf("etcd error: %v", err)
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return shutdown(1)
		}
	}
}

// waitReady polls /readyz until it answers "ok".
func waitReady(ctx context.Context, serverURL string, caPEM []byte, token string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("bad CA PEM")
	}
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, Proxy: nil},
	}
	deadline := time.Now().Add(readyDeadline)
	var last string
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, serverURL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok" {
				return nil
			}
			last = fmt.Sprintf("HTTP %d", resp.StatusCode)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("timeout after %v (last: %s)", readyDeadline, last)
}

func startEtcd(dataDir string, clientPort, peerPort int, logLevel string) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "default"
	cfg.Dir = dataDir
	cu := url.URL{Scheme: "http", Host: net.JoinHostPort(loopback, strconv.Itoa(clientPort))}
	pu := url.URL{Scheme: "http", Host: net.JoinHostPort(loopback, strconv.Itoa(peerPort))}
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = logLevel
	// Test fixture: skip fsync. Writes still reach the page cache, so data
	// survives any stop of this process (even SIGKILL), just not a host crash.
	cfg.UnsafeNoFsync = true
	cfg.ListenMetricsUrls = nil
	return embed.StartEtcd(cfg)
}

// choosePort returns want if non-zero, else prev if it is free, else a free port.
func choosePort(want, prev int) (int, error) {
	if want != 0 {
		return want, nil
	}
	if prev != 0 && portFree(prev) {
		return prev, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(loopback, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(loopback, strconv.Itoa(p)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func loadState(dir string) state {
	var st state
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err == nil {
		_ = json.Unmarshal(b, &st)
	}
	return st
}

// ensureServingCert pre-seeds --cert-dir with the same kind of self-signed
// pair kube-apiserver would generate itself (apiserver.crt = leaf + CA), so
// the kubeconfig can be written before the apiserver starts. An existing,
// still valid pair is reused across restarts.
func ensureServingCert(certDir string) ([]byte, error) {
	crt := filepath.Join(certDir, "apiserver.crt")
	key := filepath.Join(certDir, "apiserver.key")
	if b, err := os.ReadFile(crt); err == nil {
		if _, kerr := os.Stat(key); kerr == nil && certsValid(b, 24*time.Hour) {
			return b, nil
		}
	}
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKeyWithFixtures(
		loopback,
		[]net.IP{net.ParseIP(serviceIP), net.ParseIP("::1")},
		[]string{"localhost", "kubernetes.default.svc", "kubernetes.default", "kubernetes"},
		"")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(key, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(crt, certPEM, 0o644); err != nil {
		return nil, err
	}
	return certPEM, nil
}

// certsValid reports whether every cert in the PEM bundle is valid for at least margin.
func certsValid(pemBytes []byte, margin time.Duration) bool {
	certs, err := certutil.ParseCertsPEM(pemBytes)
	if err != nil || len(certs) == 0 {
		return false
	}
	for _, c := range certs {
		if time.Now().Add(margin).After(c.NotAfter) {
			return false
		}
	}
	return true
}

func ensureAdminToken(dir string) (string, error) {
	tf := filepath.Join(dir, "admin.token")
	var token string
	if b, err := os.ReadFile(tf); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		token = strings.TrimSpace(string(b))
	} else {
		buf := make([]byte, 24)
		if _, err := rand.Read(buf); err != nil {
			return "", err
		}
		token = hex.EncodeToString(buf)
		if err := writeFileAtomic(tf, []byte(token+"\n"), 0o600); err != nil {
			return "", err
		}
	}
	// --token-auth-file: token,user,uid,"group1,group2"
	line := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", token)
	return token, writeFileAtomic(filepath.Join(dir, "tokens.csv"), []byte(line), 0o600)
}

// ensureSAKey returns the path of an RSA private key (PEM) used both as
// --service-account-key-file (public part) and --service-account-signing-key-file.
func ensureSAKey(dir string) (string, error) {
	p := filepath.Join(dir, "sa.key")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	return p, writeFileAtomic(p, b, 0o600)
}

func writeKubeconfig(path, server string, caPEM []byte, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: admin
    namespace: default
current-context: test
`, server, base64.StdEncoding.EncodeToString(caPEM), token)
	return writeFileAtomic(path, []byte(kc), 0o600)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), 0o644)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := fmt.Sprintf("%s.tmp.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
