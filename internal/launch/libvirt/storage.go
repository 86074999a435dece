package libvirt

import (
	"context"
	"errors"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// ErrNotFound says a libvirt object does not exist.
var ErrNotFound = errors.New("does not exist")

// notFound turns libvirt's "no such object" errors into ErrNotFound.
func notFound(err error, kind, name string) error {
	switch errCode(err) {
	case golibvirt.ErrNoDomain, golibvirt.ErrNoNetwork, golibvirt.ErrNoStoragePool, golibvirt.ErrNoStorageVol:
		return fmt.Errorf("%s %s: %w", kind, name, ErrNotFound)
	}
	return err
}

// PoolInfo describes a storage pool.
type PoolInfo struct {
	Name            string
	Type            string // dir, fs, netfs, logical, …
	Path            string // its target path on the host
	Active          bool
	CapacityBytes   uint64
	AllocationBytes uint64
	AvailableBytes  uint64
}

// zeroedVolumes reports whether a new raw volume of the pool reads as zeros (a sparse
// file), so an upload may skip zero blocks.
func (p PoolInfo) zeroedVolumes() bool {
	return p.Type == "dir" || p.Type == "fs" || p.Type == "netfs"
}

func (c *Client) lookupPool(ctx context.Context, name string) (golibvirt.StoragePool, error) {
	var p golibvirt.StoragePool
	if err := checkName("storage pool", name); err != nil {
		return p, err
	}
	err := c.do(ctx, "look up storage pool "+name, func() (err error) {
		p, err = c.lv.StoragePoolLookupByName(name)
		return notFound(err, "storage pool", name)
	})
	return p, err
}

// Pool describes a storage pool; an error wrapping ErrNotFound when there is none.
func (c *Client) Pool(ctx context.Context, name string) (PoolInfo, error) {
	p, err := c.lookupPool(ctx, name)
	if err != nil {
		return PoolInfo{}, err
	}
	return c.poolInfo(ctx, p)
}

func (c *Client) poolInfo(ctx context.Context, p golibvirt.StoragePool) (PoolInfo, error) {
	info := PoolInfo{Name: p.Name}
	var x string
	err := c.do(ctx, "describe storage pool "+p.Name, func() error {
		st, capa, alloc, avail, err := c.lv.StoragePoolGetInfo(p)
		if err != nil {
			return err
		}
		info.Active = golibvirt.StoragePoolState(st) == golibvirt.StoragePoolRunning
		info.CapacityBytes, info.AllocationBytes, info.AvailableBytes = capa, alloc, avail
		x, err = c.lv.StoragePoolGetXMLDesc(p, 0)
		return err
	})
	if err != nil {
		return info, err
	}
	var px libvirtxml.StoragePool
	if err := px.Unmarshal(x); err != nil {
		return info, fmt.Errorf("storage pool %s: its XML: %w", p.Name, err)
	}
	info.Type = px.Type
	if px.Target != nil {
		info.Path = px.Target.Path
	}
	return info, nil
}

// EnsurePool makes sure a storage pool exists and runs: an inactive pool is started
// and refreshed; a missing one is made as a directory pool on dir (autostarted) when
// dir is set, and refused otherwise.
func (c *Client) EnsurePool(ctx context.Context, name, dir string) (PoolInfo, error) {
	p, err := c.lookupPool(ctx, name)
	if errors.Is(err, ErrNotFound) && dir != "" {
		p, err = c.definePool(ctx, name, dir)
	}
	if errors.Is(err, ErrNotFound) {
		return PoolInfo{}, fmt.Errorf("storage pool %s does not exist at %s: create it (virsh pool-define-as %s dir --target DIR; virsh pool-start %s; virsh pool-autostart %s) or name another",
			name, c.addr, name, name, name)
	}
	if err != nil {
		return PoolInfo{}, err
	}
	info, err := c.poolInfo(ctx, p)
	if err != nil {
		return info, err
	}
	if !info.Active {
		err = c.do(ctx, "start storage pool "+name, func() error { return c.lv.StoragePoolCreate(p, 0) })
		if err != nil {
			return info, err
		}
	}
	err = c.do(ctx, "refresh storage pool "+name, func() error { return c.lv.StoragePoolRefresh(p, 0) })
	if err != nil {
		return info, err
	}
	return c.poolInfo(ctx, p)
}

// definePool defines, builds and autostarts a directory pool.
func (c *Client) definePool(ctx context.Context, name, dir string) (golibvirt.StoragePool, error) {
	x, err := (&libvirtxml.StoragePool{Type: "dir", Name: name,
		Target: &libvirtxml.StoragePoolTarget{Path: dir}}).Marshal()
	if err != nil {
		return golibvirt.StoragePool{}, err
	}
	var p golibvirt.StoragePool
	err = c.do(ctx, "define storage pool "+name, func() error {
		if p, err = c.lv.StoragePoolDefineXML(x, 0); err != nil {
			return err
		}
		if err := c.lv.StoragePoolBuild(p, golibvirt.StoragePoolBuildNew); err != nil {
			return err
		}
		return c.lv.StoragePoolSetAutostart(p, 1)
	})
	c.log.Info("defined a storage pool", "pool", name, "dir", dir, "err", err)
	return p, err
}

// RemovePool stops and undefines a storage pool (its directory and volumes stay).
// A missing pool is no error.
func (c *Client) RemovePool(ctx context.Context, name string) error {
	p, err := c.lookupPool(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.do(ctx, "remove storage pool "+name, func() error {
		if err := c.lv.StoragePoolDestroy(p); err != nil && errCode(err) != golibvirt.ErrOperationInvalid {
			return err
		}
		return c.lv.StoragePoolUndefine(p)
	})
}

// VolumeInfo describes a volume.
type VolumeInfo struct {
	Pool, Name, Path string
	CapacityBytes    uint64
	AllocationBytes  uint64
}

func (c *Client) lookupVolume(ctx context.Context, pool, name string) (golibvirt.StorageVol, error) {
	var v golibvirt.StorageVol
	if err := checkName("volume", name); err != nil {
		return v, err
	}
	p, err := c.lookupPool(ctx, pool)
	if err != nil {
		return v, err
	}
	err = c.do(ctx, "look up volume "+pool+"/"+name, func() (err error) {
		v, err = c.lv.StorageVolLookupByName(p, name)
		return notFound(err, "volume", pool+"/"+name)
	})
	return v, err
}

// Volume describes a volume; an error wrapping ErrNotFound when there is none.
func (c *Client) Volume(ctx context.Context, pool, name string) (VolumeInfo, error) {
	v, err := c.lookupVolume(ctx, pool, name)
	if err != nil {
		return VolumeInfo{}, err
	}
	info := VolumeInfo{Pool: pool, Name: name}
	err = c.do(ctx, "describe volume "+pool+"/"+name, func() error {
		_, capa, alloc, err := c.lv.StorageVolGetInfo(v)
		if err != nil {
			return err
		}
		info.CapacityBytes, info.AllocationBytes = capa, alloc
		info.Path, err = c.lv.StorageVolGetPath(v)
		return err
	})
	return info, err
}

// Volumes lists the names of a pool's volumes.
func (c *Client) Volumes(ctx context.Context, pool string) ([]string, error) {
	p, err := c.lookupPool(ctx, pool)
	if err != nil {
		return nil, err
	}
	var names []string
	err = c.do(ctx, "list the volumes of "+pool, func() error {
		if err := c.lv.StoragePoolRefresh(p, 0); err != nil {
			return err
		}
		vols, _, err := c.lv.StoragePoolListAllVolumes(p, 1, 0)
		for _, v := range vols {
			names = append(names, v.Name)
		}
		return err
	})
	return names, err
}

// CreateVolume makes a raw volume of size bytes (sparse where the pool allows).
func (c *Client) CreateVolume(ctx context.Context, pool, name string, size int64) (VolumeInfo, error) {
	if size <= 0 {
		return VolumeInfo{}, fmt.Errorf("volume %s/%s: size %d", pool, name, size)
	}
	if err := checkName("volume", name); err != nil {
		return VolumeInfo{}, err
	}
	p, err := c.lookupPool(ctx, pool)
	if err != nil {
		return VolumeInfo{}, err
	}
	x, err := (&libvirtxml.StorageVolume{Type: "file", Name: name,
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(size)},
		Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}},
	}).Marshal()
	if err != nil {
		return VolumeInfo{}, err
	}
	err = c.do(ctx, "create volume "+pool+"/"+name, func() error {
		_, err := c.lv.StorageVolCreateXML(p, x, 0)
		return err
	})
	if err != nil {
		return VolumeInfo{}, err
	}
	return c.Volume(ctx, pool, name)
}

// DeleteVolume deletes a volume; a missing one is no error.
func (c *Client) DeleteVolume(ctx context.Context, pool, name string) error {
	v, err := c.lookupVolume(ctx, pool, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	err = c.do(ctx, "delete volume "+pool+"/"+name, func() error { return c.lv.StorageVolDelete(v, 0) })
	if err == nil {
		c.log.Info("deleted a volume", "pool", pool, "volume", name)
	}
	return err
}
