// Package wiretest builds what a hostile or broken agent could send, for tests of the
// wire protocol's receivers: frames the wire package's own encoder refuses to produce.
package wiretest

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// HelloFrame is the frame of a Hello of server (agent version "test", tracker "scan",
// generation 1) declaring count volumes and carrying vols, encoded with no check at
// all: sizes, counts and names may break every bound of docs/wire.md.
func HelloFrame(server string, count int, vols []wire.Volume) []byte {
	p := binary.BigEndian.AppendUint16(nil, 1)
	for _, s := range []string{server, "test", "scan"} {
		p = binary.BigEndian.AppendUint16(p, uint16(len(s)))
		p = append(p, s...)
	}
	p = binary.BigEndian.AppendUint64(p, 1)
	p = binary.BigEndian.AppendUint16(p, uint16(count))
	for _, v := range vols {
		p = binary.BigEndian.AppendUint16(p, uint16(len(v.Name)))
		p = append(p, v.Name...)
		p = binary.BigEndian.AppendUint64(p, v.SizeBytes)
		p = binary.BigEndian.AppendUint32(p, v.BlockSize)
	}
	f := []byte{byte(wire.TypeHello), 0, 0, 0}
	f = binary.BigEndian.AppendUint32(f, uint32(len(p)))
	f = append(f, p...)
	return binary.BigEndian.AppendUint32(f, crc32.Checksum(f, crc32.MakeTable(crc32.Castagnoli)))
}
