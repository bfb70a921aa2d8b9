"""Device drivers: libvirt node devices, sysfs, NVML (pynvml), mdev, MIG, FPGA programming."""
