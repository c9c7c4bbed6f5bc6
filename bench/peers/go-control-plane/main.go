// Command xds-peer is the go-control-plane side of Pylon's fleet benchmark
// (bench/xds_fleet.rs): it serves ADS, state-of-the-world and delta, from
// go-control-plane's snapshot cache, with the resources pylon-xds would
// serve for the same YAML.
//
// The resources come from `pylon-xds render FILE` (protobuf JSON, with each
// type's version). The file is read at start and again whenever it is
// replaced (written and closed, or renamed into place); every read becomes a
// new snapshot. All nodes hash to one key, so the whole fleet shares one
// snapshot and each SetSnapshot answers every open watch, which is how a
// control plane with one config for many proxies uses the cache.
//
// Each type keeps the version pylon-xds gives it, so an endpoint edit moves
// the EDS version only and SotW streams are sent EDS alone, as from
// pylon-xds. Delta streams get go-control-plane's own per-resource versions
// (hashes of the encoded resources).
//
// Usage: xds-peer -listen 127.0.0.1:18000 -resources rendered.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"

	// The types pylon-xds's resources embed in `Any`s: imported for their
	// registration, so that protojson can resolve "@type".
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/cares/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/getaddrinfo/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// The one key every node shares in the snapshot cache.
const fleetKey = "fleet"

// Streams one HTTP/2 connection may carry at once: pylon-xds's limit.
const maxStreamsPerConnection = 1024

// oneSnapshot hashes every node to the same key.
type oneSnapshot struct{}

func (oneSnapshot) ID(*core.Node) string { return fleetKey }

// rendered is the output of `pylon-xds render`.
type rendered struct {
	Version   string    `json:"version"`
	Clusters  typeBlock `json:"clusters"`
	Endpoints typeBlock `json:"endpoints"`
	Listeners typeBlock `json:"listeners"`
	Routes    typeBlock `json:"routes"`
}

type typeBlock struct {
	TypeURL   string `json:"type_url"`
	Version   string `json:"version"`
	Resources []struct {
		Name     string          `json:"name"`
		Resource json.RawMessage `json:"resource"`
	} `json:"resources"`
}

// load reads a rendered file into a consistent snapshot.
func load(path string) (*cache.Snapshot, string, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	var r rendered
	if err := json.Unmarshal(text, &r); err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	snap := &cache.Snapshot{}
	for _, block := range []typeBlock{r.Clusters, r.Endpoints, r.Listeners, r.Routes} {
		if block.TypeURL == "" {
			return nil, "", fmt.Errorf("%s: a type without type_url", path)
		}
		items := make([]types.Resource, 0, len(block.Resources))
		for _, res := range block.Resources {
			var any anypb.Any
			if err := protojson.Unmarshal(res.Resource, &any); err != nil {
				return nil, "", fmt.Errorf("%s: %s %q: %w", path, block.TypeURL, res.Name, err)
			}
			msg, err := any.UnmarshalNew()
			if err != nil {
				return nil, "", fmt.Errorf("%s: %s %q: %w", path, block.TypeURL, res.Name, err)
			}
			items = append(items, msg)
		}
		index := cache.GetResponseType(block.TypeURL)
		if index == types.UnknownType {
			return nil, "", fmt.Errorf("%s: unknown type %s", path, block.TypeURL)
		}
		snap.Resources[index] = cache.NewResources(block.Version, items)
	}
	if err := snap.Consistent(); err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	return snap, r.Version, nil
}

// watch calls reload whenever `path` is written and closed or renamed into
// place (inotify on its directory, as pylon-xds watches its config).
func watch(path string, reload func()) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return err
	}
	dir, name := filepath.Dir(path), filepath.Base(path)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO); err != nil {
		return err
	}
	buf := make([]byte, 64*1024)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		hit := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			length := int(uint32(buf[off+12]) | uint32(buf[off+13])<<8 | uint32(buf[off+14])<<16 | uint32(buf[off+15])<<24)
			start := off + unix.SizeofInotifyEvent
			if strings.TrimRight(string(buf[start:start+length]), "\x00") == name {
				hit = true
			}
			off = start + length
		}
		if hit {
			reload()
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18000", "gRPC (ADS) listen address")
	path := flag.String("resources", "", "the output of `pylon-xds render` (watched)")
	flag.Parse()
	if *path == "" {
		log.Fatal("-resources is required")
	}
	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, oneSnapshot{}, nil)
	set := func() error {
		snap, version, err := load(*path)
		if err != nil {
			return err
		}
		if err := snapshots.SetSnapshot(ctx, fleetKey, snap); err != nil {
			return err
		}
		log.Printf("serving version %s", version)
		return nil
	}
	if err := set(); err != nil {
		log.Fatal(err)
	}
	go func() {
		err := watch(*path, func() {
			if err := set(); err != nil {
				log.Printf("reload failed, still serving the last snapshot: %v", err)
			}
		})
		log.Fatalf("watching %s: %v", *path, err)
	}()

	srv := server.NewServer(ctx, snapshots, nil)
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(maxStreamsPerConnection),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(grpcServer, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(grpcServer, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(grpcServer, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(grpcServer, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(grpcServer, srv)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("ADS listening on %s", l.Addr())
	if err := grpcServer.Serve(l); err != nil {
		log.Fatal(err)
	}
}
