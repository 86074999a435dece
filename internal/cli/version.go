package cli

// version is what this binary reports: lifeboat --version, the control plane's API,
// agents' registrations. Release builds set it at link time, as packaging/deb does:
//
//	go build -ldflags "-X github.com/lifeboat-dr/lifeboat/internal/cli.version=0.1.0"
//
// It is a variable only so that the linker can set it; nothing assigns it at run time.
var version = "0.1.0-dev"
