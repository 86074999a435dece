package rescue

import (
	"fmt"
	"strings"
)

// baseKernelArgs start the rescue kernel's command line: the kernel's messages go to the
// serial port and the screen; /dev/console, where init's shell runs, is the screen.
var baseKernelArgs = []string{"console=ttyS0,115200", "console=tty0"}

// maxCommandLine bounds the APPEND line isolinux is given: the x86 kernel keeps 2048
// bytes of command line and cuts the rest without a word, and isolinux adds
// "BOOT_IMAGE=/boot/vmlinuz" and "initrd=/boot/initrd.img" to it.
const maxCommandLine = 2048 - 64

// ValidateKernelArgs checks extra kernel command-line words: each one printable ASCII
// without spaces or quotes (the kernel and isolinux split the line at spaces and treat
// quotes specially), and all of them, with the rescue media's own, short enough for the
// kernel's command line.
func ValidateKernelArgs(args []string) error {
	for _, a := range args {
		if a == "" {
			return fmt.Errorf("an empty kernel command-line word")
		}
		for _, r := range a {
			if r <= ' ' || r >= 0x7f || r == '"' {
				return fmt.Errorf("kernel command-line word %q: %q is not allowed (printable ASCII only, no spaces or quotes)", shorten(a), r)
			}
		}
	}
	if n := len(commandLine(args)); n > maxCommandLine {
		return fmt.Errorf("the kernel command line would be %d bytes, more than the %d it may hold", n, maxCommandLine)
	}
	return nil
}

// commandLine is the command line isolinux gives the kernel, without what it adds.
func commandLine(extra []string) string {
	return strings.Join(append(append([]string(nil), baseKernelArgs...), extra...), " ")
}

// shorten cuts a word for an error message: it may be long, and a token's value is not
// shown.
func shorten(s string) string {
	if strings.HasPrefix(s, "lifeboat.token=") {
		return "lifeboat.token=…"
	}
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// isolinuxConfig is isolinux.cfg: boot the kernel with the initrd at once, on the serial
// port as well as the screen.
func isolinuxConfig(extra []string) string {
	return "SERIAL 0 115200\n" +
		"DEFAULT lifeboat\n" +
		"PROMPT 0\n" +
		"TIMEOUT 0\n" +
		"LABEL lifeboat\n" +
		"  KERNEL /boot/vmlinuz\n" +
		"  INITRD /boot/initrd.img\n" +
		"  APPEND " + commandLine(extra) + "\n"
}
