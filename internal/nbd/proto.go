package nbd

import "encoding/binary"

// Magic numbers of the protocol (docs: NetworkBlockDevice/nbd doc/proto.md).
const (
	magicInit       uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption     uint64 = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply   uint64 = 0x0003e889045565a9
	magicRequest    uint32 = 0x25609513
	magicSimple     uint32 = 0x67446698
	magicStructured uint32 = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle   uint16 = 1 << 0
	flagNoZeroes        uint16 = 1 << 1
	clientFixedNewstyle uint32 = 1 << 0
	clientNoZeroes      uint32 = 1 << 1
)

// Transmission flags.
const (
	tflagHasFlags  uint16 = 1 << 0
	tflagReadOnly  uint16 = 1 << 1
	tflagSendFlush uint16 = 1 << 2
	tflagSendDF    uint16 = 1 << 7
	tflagMultiConn uint16 = 1 << 8
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
)

// Option reply types.
const (
	repAck         uint32 = 1
	repServer      uint32 = 2
	repInfo        uint32 = 3
	repMetaContext uint32 = 4
	repErrUnsup    uint32 = 1<<31 + 1
	repErrPolicy   uint32 = 1<<31 + 2
	repErrInvalid  uint32 = 1<<31 + 3
	repErrTLSReqd  uint32 = 1<<31 + 5
	repErrUnknown  uint32 = 1<<31 + 6
	repErrShutdown uint32 = 1<<31 + 7
	repErrTooBig   uint32 = 1<<31 + 9
)

// Information types of NBD_OPT_INFO and NBD_OPT_GO.
const (
	infoExport    uint16 = 0
	infoBlockSize uint16 = 3
)

// Commands.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags.
const (
	cmdFlagFUA    uint16 = 1 << 0
	cmdFlagDF     uint16 = 1 << 2
	cmdFlagReqOne uint16 = 1 << 3
)

// Structured reply flags and chunk types.
const (
	replyFlagDone    uint16 = 1 << 0
	replyNone        uint16 = 0
	replyOffsetData  uint16 = 1
	replyBlockStatus uint16 = 5
	replyError       uint16 = 1<<15 + 1
)

// Error values of replies.
const (
	errPerm     uint32 = 1
	errIO       uint32 = 5
	errInvalid  uint32 = 22
	errOverflow uint32 = 75
	errShutdown uint32 = 108
)

// The metadata context this server offers, and its id in replies.
const (
	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1
	stateHole            = 1 << 0
	stateZero            = 1 << 1
)

// Sizes of the fixed-length messages.
const (
	optionHeaderLen = 16 // magic, option, length
	requestLen      = 28 // magic, flags, type, cookie, offset, length
	simpleReplyLen  = 16 // magic, error, cookie
	chunkHeaderLen  = 20 // magic, flags, type, cookie, length
)

// optionReply encodes the header of a reply to an option, with room for its data.
func optionReply(opt, typ uint32, data []byte) []byte {
	b := make([]byte, 0, 20+len(data))
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// simpleReply encodes a simple reply header.
func simpleReply(errno uint32, cookie uint64) []byte {
	b := make([]byte, 0, simpleReplyLen)
	b = binary.BigEndian.AppendUint32(b, magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}

// chunkHeader encodes the header of a structured reply chunk whose payload is n bytes.
func chunkHeader(flags, typ uint16, cookie uint64, n uint32) []byte {
	b := make([]byte, 0, chunkHeaderLen)
	b = binary.BigEndian.AppendUint32(b, magicStructured)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, n)
}

// request is one request of the transmission phase.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
}

// parseRequest decodes a request header; ok is false when its magic is wrong.
func parseRequest(b []byte) (r request, ok bool) {
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return request{}, false
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		cookie: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, true
}

// cmdName names a command for the log.
func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disconnect"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write-zeroes"
	case cmdBlockStatus:
		return "block-status"
	}
	return "unknown"
}
