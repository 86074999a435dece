package testutil

import (
	"os"
	"strings"
	"testing"
)

// The image's content is checked here without booting it; internal/launch/qemu boots it.
func TestBuildBootImage(t *testing.T) {
	img := BuildBootImage(t, BootImageOptions{
		SizeMiB:  128,
		Hostname: "web-1",
		Page:     "<p>page one</p>",
		Probe:    "echo probing",
		Files:    map[string]string{"/etc/app/app.conf": "k=v\n", "/usr/bin/hello": "#!/bin/sh\necho hello\n"},
	})
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 128<<20 {
		t.Errorf("image is %d bytes, want 128 MiB", st.Size())
	}
	for p, want := range map[string]string{
		"/etc/hostname":          "web-1\n",
		"/www/index.html":        "<p>page one</p>",
		"/etc/lifeboat-probe.sh": "echo probing",
		"/etc/app/app.conf":      "k=v\n",
	} {
		if got := ReadFileFromImage(t, img, p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	if init := ReadFileFromImage(t, img, "/sbin/init"); !strings.Contains(init, BootedMarker) || !strings.HasPrefix(init, "#!/bin/sh") {
		t.Errorf("/sbin/init is not the boot script:\n%s", init)
	}
	kernel, _, _ := HostKernel(t)
	want, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	if got := ReadFileFromImage(t, img, "/boot/vmlinuz"); got != string(want) {
		t.Errorf("/boot/vmlinuz differs from %s (%d bytes, want %d)", kernel, len(got), len(want))
	}
	// Applet links and modes, as debugfs lists them.
	for _, c := range []struct{ path, mode string }{
		{"/bin/sh", "120777"}, {"/usr/sbin/httpd", "120777"}, {"/bin/busybox", "100755"},
		{"/sbin/init", "100755"}, {"/usr/bin/hello", "100755"}, {"/etc/app/app.conf", "100644"},
	} {
		out, err := debugfs(img, false, `stat "`+c.path+`"`)
		if err != nil {
			t.Errorf("stat %s: %v", c.path, err)
			continue
		}
		if !strings.Contains(out, "Mode:  0"+c.mode[3:]) || !strings.Contains(out, "User:     0") {
			t.Errorf("%s: want mode %s owned by root, debugfs says:\n%s", c.path, c.mode, out)
		}
		if strings.HasPrefix(c.mode, "12") != strings.Contains(out, "Type: symlink") {
			t.Errorf("%s: want mode %s, debugfs says:\n%s", c.path, c.mode, out)
		}
	}

	// A test changes the page inside the image, then reads it back.
	SetFileInImage(t, img, "/www/index.html", "<p>page two</p>")
	if got := ReadFileFromImage(t, img, "/www/index.html"); got != "<p>page two</p>" {
		t.Errorf("after SetFileInImage: %q", got)
	}
	SetFileInImage(t, img, "/www/new.html", "new")
	if got := ReadFileFromImage(t, img, "/www/new.html"); got != "new" {
		t.Errorf("new file: %q", got)
	}
	RequireCommand(t, "e2fsck", "e2fsprogs")
	Run(t, "e2fsck", "-f", "-n", img)
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{"6.1.0-9-amd64", "6.1.0-10-amd64", true},
		{"6.1.0-10-amd64", "6.1.0-9-amd64", false},
		{"5.10.0-28-amd64", "6.1.0-1-amd64", true},
		{"6.1.0-56-amd64", "6.1.0-56-amd64", false},
	} {
		if got := versionLess(c.a, c.b); got != c.less {
			t.Errorf("versionLess(%q, %q) = %v", c.a, c.b, got)
		}
	}
}
