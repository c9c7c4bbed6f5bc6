/*
 * grpc-java-client: the grpc-java row of Pylon's interop matrix
 * (integration-tests/tests/interop.rs): a proxyless gRPC client that resolves
 * xds:/// targets through pylon-xds, and the test backends it calls, driven by
 * integration-tests/src/grpc_clients.rs over the same line protocols as the
 * grpc-go program (../go/main.go) and ../grpc_client.py.
 *
 *   grpc-java-client client
 *       The xDS bootstrap comes from GRPC_XDS_BOOTSTRAP. One command per line
 *       on stdin, one JSON line on stdout per command:
 *         call TARGET N TIMEOUT_MS  N sequential unary calls to
 *                                   /pylon.test.Echo/Who on the channel for
 *                                   TARGET (made on first use and kept), each
 *                                   with a deadline of TIMEOUT_MS; answers
 *                                   {"errors": {"<code name>": n}, "ok": {"<backend>": n}}
 *         quit                      shuts the channels down and exits (as
 *                                   does EOF on stdin)
 *       A malformed command is answered {"error": "<message>"}.
 *
 *   grpc-java-client backends NAME=PORT...
 *       One gRPC server per argument on 127.0.0.1:PORT, each answering
 *       /pylon.test.Echo/Who with its NAME. Prints READY once all listen;
 *       exits when stdin closes. A port that cannot be bound is reported as
 *       "bind failed: NAME=PORT" on stderr, with exit status 2.
 *
 * Requests and responses are raw bytes: there is no generated code.
 *
 * PYLON_GRPC_JAVA_TRACE, when set, is a comma-separated list of
 * java.util.logging logger names (e.g. io.grpc.xds) logged at every level to
 * stderr: grpc-java has no tracing variable of its own.
 */
package pylon.test;

import io.grpc.CallOptions;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.InsecureServerCredentials;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import io.grpc.Server;
import io.grpc.ServerServiceDefinition;
import io.grpc.Status;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.ServerCalls;
import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.logging.ConsoleHandler;
import java.util.logging.Level;
import java.util.logging.Logger;

public final class GrpcJavaClient {
  private static final String SERVICE = "pylon.test.Echo";

  /** Bytes in, bytes out: the messages are opaque to every peer. */
  private static final MethodDescriptor.Marshaller<byte[]> RAW =
      new MethodDescriptor.Marshaller<byte[]>() {
        @Override
        public InputStream stream(byte[] value) {
          return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream stream) {
          try {
            return stream.readAllBytes();
          } catch (IOException e) {
            throw Status.INTERNAL
                .withDescription("reading a message: " + e)
                .withCause(e)
                .asRuntimeException();
          }
        }
      };

  private static final MethodDescriptor<byte[], byte[]> WHO =
      MethodDescriptor.<byte[], byte[]>newBuilder()
          .setType(MethodDescriptor.MethodType.UNARY)
          .setFullMethodName(MethodDescriptor.generateFullMethodName(SERVICE, "Who"))
          .setRequestMarshaller(RAW)
          .setResponseMarshaller(RAW)
          .build();

  private GrpcJavaClient() {}

  public static void main(String[] args) throws IOException {
    traceLoggers(System.getenv("PYLON_GRPC_JAVA_TRACE"));
    if (args.length < 1) {
      System.err.println("usage: grpc-java-client client | backends NAME=PORT...");
      System.exit(64);
    }
    switch (args[0]) {
      case "client":
        client();
        break;
      case "backends":
        backends(Arrays.copyOfRange(args, 1, args.length));
        break;
      default:
        System.err.println("unknown mode " + quote(args[0]) + ": client or backends");
        System.exit(64);
    }
    // gRPC's own threads must not keep the process alive once the harness is
    // done with it.
    System.exit(0);
  }

  /** Sends the named loggers' every record to stderr. */
  private static void traceLoggers(String names) {
    if (names == null || names.isBlank()) {
      return;
    }
    ConsoleHandler handler = new ConsoleHandler();
    handler.setLevel(Level.ALL);
    for (String name : names.split(",")) {
      Logger logger = Logger.getLogger(name.trim());
      logger.setLevel(Level.ALL);
      logger.addHandler(handler);
      logger.setUseParentHandlers(false);
      // Held: java.util.logging keeps loggers only weakly.
      TRACED.add(logger);
    }
  }

  private static final List<Logger> TRACED = new ArrayList<>();

  private static void client() throws IOException {
    Map<String, ManagedChannel> channels = new LinkedHashMap<>();
    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    try {
      String raw;
      while ((raw = in.readLine()) != null) {
        String line = raw.trim();
        if (line.isEmpty()) {
          continue;
        }
        if (line.equals("quit")) {
          return;
        }
        out.println(handle(channels, line));
        out.flush();
        if (out.checkError()) {
          System.err.println("writing an answer failed: stdout closed");
          return;
        }
      }
    } finally {
      for (ManagedChannel channel : channels.values()) {
        channel.shutdownNow();
      }
    }
  }

  private static String handle(Map<String, ManagedChannel> channels, String line) {
    String[] words = line.split("\\s+");
    if (words.length != 4 || !words[0].equals("call")) {
      return error(
          "unknown command " + quote(line) + "; expected `call TARGET N TIMEOUT_MS` or `quit`");
    }
    int n;
    int timeoutMs;
    try {
      n = Integer.parseInt(words[2]);
      timeoutMs = Integer.parseInt(words[3]);
    } catch (NumberFormatException e) {
      n = -1;
      timeoutMs = 0;
    }
    if (n < 0 || timeoutMs <= 0) {
      return error("N must be >= 0 and TIMEOUT_MS > 0 integers in " + quote(line));
    }
    String target = words[1];
    ManagedChannel channel = channels.get(target);
    if (channel == null) {
      try {
        channel = Grpc.newChannelBuilder(target, InsecureChannelCredentials.create()).build();
      } catch (RuntimeException e) {
        return error("channel for " + target + ": " + e.getMessage());
      }
      channels.put(target, channel);
    }
    Map<String, Integer> ok = new TreeMap<>();
    Map<String, Integer> errors = new TreeMap<>();
    for (int i = 0; i < n; i++) {
      try {
        byte[] reply =
            ClientCalls.blockingUnaryCall(
                channel,
                WHO,
                CallOptions.DEFAULT.withDeadlineAfter(timeoutMs, TimeUnit.MILLISECONDS),
                new byte[0]);
        ok.merge(new String(reply, StandardCharsets.UTF_8), 1, Integer::sum);
      } catch (RuntimeException e) {
        Status status = Status.fromThrowable(e);
        // Status.Code's names are grpcio's StatusCode names (UNAVAILABLE, ...).
        errors.merge(status.getCode().name(), 1, Integer::sum);
        logFailure(target, status);
      }
    }
    // Keys sorted, as the other clients write them.
    return "{\"errors\": " + counts(errors) + ", \"ok\": " + counts(ok) + "}";
  }

  private static final Set<String> LOGGED = new HashSet<>();

  /**
   * Writes why a call failed to stderr (the harness's log), once per distinct
   * reason: the answer carries only the code.
   */
  private static void logFailure(String target, Status status) {
    StringBuilder why = new StringBuilder();
    why.append(status.getCode()).append(": ").append(status.getDescription());
    Throwable cause = status.getCause();
    for (int depth = 0; cause != null && depth < 8; depth++, cause = cause.getCause()) {
      why.append("\n  caused by ").append(cause);
    }
    String line = "call to " + target + " failed: " + why;
    if (LOGGED.add(line)) {
      System.err.println(line);
    }
  }

  private static String counts(Map<String, Integer> counts) {
    StringBuilder b = new StringBuilder("{");
    for (Map.Entry<String, Integer> e : counts.entrySet()) {
      if (b.length() > 1) {
        b.append(", ");
      }
      b.append(quote(e.getKey())).append(": ").append(e.getValue());
    }
    return b.append('}').toString();
  }

  private static String error(String message) {
    return "{\"error\": " + quote(message) + "}";
  }

  /** A JSON string literal. */
  private static String quote(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"':
          b.append("\\\"");
          break;
        case '\\':
          b.append("\\\\");
          break;
        case '\n':
          b.append("\\n");
          break;
        case '\r':
          b.append("\\r");
          break;
        case '\t':
          b.append("\\t");
          break;
        default:
          if (c < 0x20) {
            b.append(String.format("\\u%04x", (int) c));
          } else {
            b.append(c);
          }
      }
    }
    return b.append('"').toString();
  }

  private static void backends(String[] args) throws IOException {
    if (args.length == 0) {
      System.err.println("usage: grpc-java-client backends NAME=PORT...");
      System.exit(64);
    }
    List<Server> servers = new ArrayList<>();
    for (String arg : args) {
      int eq = arg.indexOf('=');
      String name = eq > 0 ? arg.substring(0, eq) : "";
      int port = -1;
      if (eq > 0) {
        try {
          port = Integer.parseInt(arg.substring(eq + 1));
        } catch (NumberFormatException e) {
          port = -1;
        }
      }
      if (name.isEmpty() || port <= 0 || port >= 65536) {
        System.err.println(
            "usage: grpc-java-client backends NAME=PORT...; bad argument " + quote(arg));
        System.exit(64);
      }
      byte[] answer = name.getBytes(StandardCharsets.UTF_8);
      ServerServiceDefinition echo =
          ServerServiceDefinition.builder(SERVICE)
              .addMethod(
                  WHO,
                  ServerCalls.asyncUnaryCall(
                      (request, reply) -> {
                        reply.onNext(answer);
                        reply.onCompleted();
                      }))
              .build();
      // Grpc.newServerBuilderForPort would listen on every address; the
      // harness wants loopback only, which the Netty builder can be told.
      Server server =
          NettyServerBuilder.forAddress(
                  new InetSocketAddress("127.0.0.1", port), InsecureServerCredentials.create())
              .addService(echo)
              .build();
      try {
        server.start();
      } catch (IOException e) {
        System.err.println("bind failed: " + name + "=" + port + " (" + e.getMessage() + ")");
        System.exit(2);
      }
      servers.add(server);
    }
    System.out.println("READY");
    System.out.flush();
    // Until the harness closes stdin (or goes away).
    InputStream in = System.in;
    byte[] sink = new byte[4096];
    while (in.read(sink) >= 0) {
      // Discarded.
    }
    for (Server server : servers) {
      server.shutdownNow();
    }
  }
}
