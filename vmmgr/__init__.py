"""vmmgr: a control plane for GPU/FPGA KVM clusters."""

__version__ = "0.1.0"
