// A minimal stargz snapshotter daemon for berth's e2e suite: Debian ships the stargz
// snapshotter's library (golang-github-containerd-stargz-snapshotter-dev) but not its daemon,
// so this serves the library's snapshotter on a containerd proxy-plugin socket, with layer
// blobs of docker.io fetched through one mirror (berth) over plain HTTP. Anonymous; no CRI,
// kubeconfig or IPFS. SIGINT or SIGTERM unmounts its layers and exits.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "unix socket to serve the snapshotter on")
	root := flag.String("root", "", "state folder (layers, mounts)")
	mirror := flag.String("mirror", "", "host:port of the plain-HTTP mirror for docker.io")
	single := flag.Bool("single-range", false, "never send requests of several ranges")
	flag.Parse()
	if *address == "" || *root == "" || *mirror == "" {
		log.Fatal("-address, -root and -mirror are required")
	}

	var config service.Config
	config.ResolverConfig.Host = map[string]resolver.HostConfig{
		"docker.io": {Mirrors: []resolver.MirrorConfig{{Host: *mirror, Insecure: true}}},
	}
	config.Config.BlobConfig.ForceSingleRangeMode = *single

	ctx := context.Background()
	sn, err := service.NewStargzSnapshotterService(ctx, *root, &config)
	if err != nil {
		log.Fatalf("snapshotter: %v", err)
	}
	_ = os.Remove(*address)
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	go func() {
		if err := rpc.Serve(l); err != nil {
			log.Printf("serve: %v", err)
		}
	}()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	rpc.Stop()
	if err := sn.Close(); err != nil {
		log.Printf("close: %v", err)
	}
}
