// Command grpc-go-client is the grpc-go row of Pylon's interop matrix
// (integration-tests/tests/interop.rs): a proxyless gRPC client that
// resolves xds:/// targets through pylon-xds, and the test backends it
// calls, driven by integration-tests/src/grpc_clients.rs over the same line
// protocols as ../grpc_client.py and ../grpc_backends.py.
//
//	grpc-go-client client
//	    The xDS bootstrap comes from GRPC_XDS_BOOTSTRAP. One command per
//	    line on stdin, one JSON line on stdout per command:
//	      call TARGET N TIMEOUT_MS  N sequential unary calls to
//	                                /pylon.test.Echo/Who on the connection for
//	                                TARGET (made on first use and kept), each
//	                                with a deadline of TIMEOUT_MS; answers
//	                                {"errors": {"<code name>": n}, "ok": {"<backend>": n}}
//	      quit                      closes the connections and exits (as
//	                                does EOF on stdin)
//	    A malformed command is answered {"error": "<message>"}.
//
//	grpc-go-client backends NAME=PORT...
//	    One gRPC server per argument on 127.0.0.1:PORT, each answering
//	    /pylon.test.Echo/Who with its NAME. Prints READY once all listen;
//	    exits when stdin closes. A port that cannot be bound is reported as
//	    "bind failed: NAME=PORT" on stderr, with exit status 2.
//
// Requests and responses are raw bytes: there is no generated code.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	// Registers the xds:/// resolver and balancers; reads GRPC_XDS_BOOTSTRAP.
	_ "google.golang.org/grpc/xds"
)

const (
	service = "pylon.test.Echo"
	method  = "/pylon.test.Echo/Who"
)

// raw is a codec for messages that are byte slices, under the name "proto"
// so that the content type is the one the other peers use.
type raw struct{}

func (raw) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return *b, nil
}

func (raw) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (raw) Name() string { return "proto" }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-go-client client | backends NAME=PORT...")
		os.Exit(64)
	}
	switch os.Args[1] {
	case "client":
		client()
	case "backends":
		backends(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q: client or backends\n", os.Args[1])
		os.Exit(64)
	}
}

func client() {
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		if line == "quit" {
			return
		}
		answer := handle(conns, line)
		// encoding/json writes map keys sorted, as the other clients do.
		if err := out.Encode(answer); err != nil {
			fmt.Fprintf(os.Stderr, "writing an answer: %v\n", err)
			return
		}
	}
}

func handle(conns map[string]*grpc.ClientConn, line string) any {
	words := strings.Fields(line)
	if len(words) != 4 || words[0] != "call" {
		return map[string]string{"error": fmt.Sprintf("unknown command %q; expected `call TARGET N TIMEOUT_MS` or `quit`", line)}
	}
	n, err1 := strconv.Atoi(words[2])
	timeoutMs, err2 := strconv.Atoi(words[3])
	if err1 != nil || err2 != nil || n < 0 || timeoutMs <= 0 {
		return map[string]string{"error": fmt.Sprintf("N must be >= 0 and TIMEOUT_MS > 0 integers in %q", line)}
	}
	target := words[1]
	conn, ok := conns[target]
	if !ok {
		c, err := grpc.NewClient(target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(raw{})))
		if err != nil {
			return map[string]string{"error": fmt.Sprintf("channel for %s: %v", target, err)}
		}
		conns[target] = c
		conn = c
	}
	okBy := map[string]int{}
	errorsBy := map[string]int{}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeoutMs)*time.Millisecond)
		req := []byte{}
		var reply []byte
		err := conn.Invoke(ctx, method, &req, &reply)
		cancel()
		if err != nil {
			errorsBy[codeName(status.Code(err))]++
			continue
		}
		okBy[string(reply)]++
	}
	return map[string]map[string]int{"errors": errorsBy, "ok": okBy}
}

// codeName is the code as grpcio's StatusCode names it (UNAVAILABLE, ...).
func codeName(c codes.Code) string {
	switch c {
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.InvalidArgument:
		return "INVALID_ARGUMENT"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.AlreadyExists:
		return "ALREADY_EXISTS"
	case codes.PermissionDenied:
		return "PERMISSION_DENIED"
	case codes.ResourceExhausted:
		return "RESOURCE_EXHAUSTED"
	case codes.FailedPrecondition:
		return "FAILED_PRECONDITION"
	case codes.OutOfRange:
		return "OUT_OF_RANGE"
	case codes.DataLoss:
		return "DATA_LOSS"
	default:
		return strings.ToUpper(c.String())
	}
}

func backends(args []string) {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: grpc-go-client backends NAME=PORT...")
		os.Exit(64)
	}
	var servers []*grpc.Server
	for _, arg := range args {
		name, port, ok := strings.Cut(arg, "=")
		p, err := strconv.Atoi(port)
		if !ok || name == "" || err != nil || p <= 0 || p >= 65536 {
			fmt.Fprintf(os.Stderr, "usage: grpc-go-client backends NAME=PORT...; bad argument %q\n", arg)
			os.Exit(64)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			fmt.Fprintf(os.Stderr, "bind failed: %s=%s (%v)\n", name, port, err)
			os.Exit(2)
		}
		answer := []byte(name)
		s := grpc.NewServer(grpc.ForceServerCodec(raw{}))
		s.RegisterService(&grpc.ServiceDesc{
			ServiceName: service,
			HandlerType: (*any)(nil),
			Methods: []grpc.MethodDesc{{
				MethodName: "Who",
				Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
					var req []byte
					if err := dec(&req); err != nil {
						return nil, err
					}
					reply := answer
					return &reply, nil
				},
			}},
		}, struct{}{})
		go s.Serve(l)
		servers = append(servers, s)
	}
	fmt.Println("READY")
	// Until the harness closes stdin (or goes away).
	io.Copy(io.Discard, os.Stdin)
	for _, s := range servers {
		s.Stop()
	}
}
