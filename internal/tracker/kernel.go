package tracker

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// reqOpMask selects the operation in a request's or bio's flags (REQ_OP_BITS = 8 since
// Linux 4.10).
const reqOpMask = 0xff

// field is where a value lies in a kernel structure.
type field struct {
	off  int16 // bytes from the start of the structure
	size int   // 1, 2, 4 or 8 bytes
}

// completionLayout is what the eBPF program needs to know about one block tracepoint
// (a completion, or block_rq_issue): which of its arguments holds the request (or bio)
// and where, inside the kernel's structures, the device, sector, length and operation
// are. It comes from the running kernel's BTF (/sys/kernel/btf/vmlinux), so no offset
// is hard-coded.
type completionLayout struct {
	tracepoint string
	// issue: the tracepoint is block_rq_issue (a request sent to the driver), whose
	// events let the tracker notice a completion the kernel never reported.
	issue bool
	// request: the object is a struct request (the device is found through its queue);
	// otherwise a struct bio.
	request bool
	// The argument (index into the program's context of u64 arguments) holding the
	// struct request * or struct bio *.
	objArg int
	// For block_rq_complete: the nr_bytes argument; -1 where the length is in the
	// object (size).
	bytesArg int

	opFlags field // request.cmd_flags or bio.bi_opf
	sector  field // request.__sector or bio.bi_iter.bi_sector
	size    field // request.__data_len or bio.bi_iter.bi_size (when bytesArg is -1)
	// The device: request.q → request_queue.disk → gendisk.major/first_minor, or
	// bio.bi_bdev → block_device.bd_dev.
	q, disk, major, minor field
	bdev, bdDev           field

	markOps []uint32 // operations that change content
}

// kernelLayouts is what kernelLayouts found: block_rq_complete's layout, and those of
// block_bio_complete and block_rq_issue when usable (nil and the reason otherwise).
type kernelLayouts struct {
	rq, bio, issue   *completionLayout
	bioErr, issueErr error
}

// readKernelLayouts reads the running kernel's BTF for the tracepoints' layouts.
func readKernelLayouts() (kernelLayouts, error) {
	var k kernelLayouts
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return k, fmt.Errorf("the kernel has no BTF type information (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): %w", err)
	}
	ops, err := markingOps(spec)
	if err != nil {
		return k, err
	}
	if k.rq, err = rqLayout(spec, "block_rq_complete"); err != nil {
		return k, fmt.Errorf("tracepoint block:block_rq_complete: %w", err)
	}
	k.rq.markOps = ops
	if k.bio, k.bioErr = bioLayout(spec); k.bioErr != nil {
		k.bioErr = fmt.Errorf("tracepoint block:block_bio_complete: %w", k.bioErr)
	} else {
		k.bio.markOps = ops
	}
	if k.issue, k.issueErr = rqLayout(spec, "block_rq_issue"); k.issueErr != nil {
		k.issueErr = fmt.Errorf("tracepoint block:block_rq_issue: %w", k.issueErr)
	} else {
		k.issue.markOps = ops
	}
	return k, nil
}

// markingOps returns the values of enum req_op that may change a device's content:
// every operation except reads, flushes and driver passthrough (whose completions
// carry no sectors). An operation added by a future kernel is marked: a superset is
// safe, a missed write is not.
func markingOps(spec *btf.Spec) ([]uint32, error) {
	var e *btf.Enum
	if err := spec.TypeByName("req_op", &e); err != nil {
		return nil, fmt.Errorf("kernel BTF has no enum req_op: %w", err)
	}
	var ops []uint32
	for _, v := range e.Values {
		switch v.Name {
		case "REQ_OP_READ", "REQ_OP_FLUSH", "REQ_OP_DRV_IN", "REQ_OP_DRV_OUT", "REQ_OP_LAST":
			continue
		}
		if v.Value <= reqOpMask {
			ops = append(ops, uint32(v.Value))
		}
	}
	if len(ops) == 0 || len(ops) > 64 {
		return nil, fmt.Errorf("kernel enum req_op has %d content-changing operations", len(ops))
	}
	return ops, nil
}

// tpParams returns the arguments of a raw tracepoint (without the leading __data).
func tpParams(spec *btf.Spec, name string) ([]btf.FuncParam, error) {
	var td *btf.Typedef
	if err := spec.TypeByName("btf_trace_"+name, &td); err != nil {
		return nil, fmt.Errorf("kernel BTF has no raw tracepoint %s: %w", name, err)
	}
	ptr, ok := btf.UnderlyingType(td.Type).(*btf.Pointer)
	if !ok {
		return nil, fmt.Errorf("btf_trace_%s is not a function pointer", name)
	}
	proto, ok := btf.UnderlyingType(ptr.Target).(*btf.FuncProto)
	if !ok || len(proto.Params) < 1 {
		return nil, fmt.Errorf("btf_trace_%s is not a function pointer", name)
	}
	return proto.Params[1:], nil
}

// paramIndex returns the index of the argument that points to struct structName.
func paramIndex(params []btf.FuncParam, structName string) (int, error) {
	for i, p := range params {
		ptr, ok := btf.UnderlyingType(p.Type).(*btf.Pointer)
		if !ok {
			continue
		}
		if s, ok := btf.UnderlyingType(ptr.Target).(*btf.Struct); ok && s.Name == structName {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no struct %s * argument", structName)
}

// rqLayout returns the layout of a request tracepoint: block_rq_complete, or
// block_rq_issue.
func rqLayout(spec *btf.Spec, tracepoint string) (*completionLayout, error) {
	params, err := tpParams(spec, tracepoint)
	if err != nil {
		return nil, err
	}
	l := &completionLayout{tracepoint: tracepoint, request: true, issue: tracepoint == "block_rq_issue", bytesArg: -1}
	if l.objArg, err = paramIndex(params, "request"); err != nil {
		return nil, err
	}
	if !l.issue {
		// nr_bytes, the completed length, is the last argument (BTF keeps no argument
		// names for tracepoints): TP_PROTO(struct request *rq, blk_status_t error,
		// unsigned int nr_bytes).
		l.bytesArg = len(params) - 1
		if in, ok := btf.UnderlyingType(params[l.bytesArg].Type).(*btf.Int); !ok || in.Size != 4 || l.bytesArg == l.objArg {
			return nil, fmt.Errorf("its last argument is not the unsigned int nr_bytes")
		}
	}
	var errs []error
	get := func(dst *field, structName, path string, sizes ...int) {
		f, err := structField(spec, structName, path, sizes...)
		errs = append(errs, err)
		*dst = f
	}
	if l.issue {
		get(&l.size, "request", "__data_len", 4)
	}
	get(&l.opFlags, "request", "cmd_flags", 4)
	get(&l.sector, "request", "__sector", 8)
	get(&l.q, "request", "q", 8)
	get(&l.disk, "request_queue", "disk", 8)
	get(&l.major, "gendisk", "major", 4)
	get(&l.minor, "gendisk", "first_minor", 4)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
}

func bioLayout(spec *btf.Spec) (*completionLayout, error) {
	params, err := tpParams(spec, "block_bio_complete")
	if err != nil {
		return nil, err
	}
	l := &completionLayout{tracepoint: "block_bio_complete", bytesArg: -1}
	if l.objArg, err = paramIndex(params, "bio"); err != nil {
		return nil, err
	}
	var errs []error
	get := func(dst *field, structName, path string, sizes ...int) {
		f, err := structField(spec, structName, path, sizes...)
		errs = append(errs, err)
		*dst = f
	}
	get(&l.opFlags, "bio", "bi_opf", 4)
	get(&l.sector, "bio", "bi_iter.bi_sector", 8)
	get(&l.size, "bio", "bi_iter.bi_size", 4)
	get(&l.bdev, "bio", "bi_bdev", 8)
	get(&l.bdDev, "block_device", "bd_dev", 4)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
}

// structField finds a member of a kernel structure by a dotted path (members of
// anonymous unions and structures are found through them) and checks its size.
func structField(spec *btf.Spec, structName, path string, sizes ...int) (field, error) {
	var s *btf.Struct
	if err := spec.TypeByName(structName, &s); err != nil {
		return field{}, fmt.Errorf("kernel BTF has no struct %s: %w", structName, err)
	}
	var typ btf.Type = s
	var off int64
	for name := range strings.SplitSeq(path, ".") {
		m, moff, ok := findMember(typ, name)
		if !ok {
			return field{}, fmt.Errorf("struct %s has no member %s", structName, path)
		}
		if m.BitfieldSize != 0 || moff%8 != 0 {
			return field{}, fmt.Errorf("struct %s member %s is a bitfield", structName, path)
		}
		off += moff / 8
		typ = m.Type
	}
	size, err := btf.Sizeof(typ)
	if err != nil {
		return field{}, fmt.Errorf("size of struct %s member %s: %w", structName, path, err)
	}
	ok := false
	for _, want := range sizes {
		ok = ok || size == want
	}
	if !ok {
		return field{}, fmt.Errorf("struct %s member %s has %d bytes, expected %v", structName, path, size, sizes)
	}
	if off < 0 || off > 1<<14 {
		return field{}, fmt.Errorf("struct %s member %s is at an unexpected offset %d", structName, path, off)
	}
	return field{off: int16(off), size: size}, nil
}

// findMember looks for a named member of a struct or union, descending into anonymous
// members; it returns the member and its offset in bits.
func findMember(typ btf.Type, name string) (btf.Member, int64, bool) {
	var members []btf.Member
	switch t := btf.UnderlyingType(typ).(type) {
	case *btf.Struct:
		members = t.Members
	case *btf.Union:
		members = t.Members
	default:
		return btf.Member{}, 0, false
	}
	for _, m := range members {
		if m.Name == name {
			return m, int64(m.Offset), true
		}
	}
	for _, m := range members {
		if m.Name == "" {
			if inner, off, ok := findMember(m.Type, name); ok {
				return inner, int64(m.Offset) + off, true
			}
		}
	}
	return btf.Member{}, 0, false
}
