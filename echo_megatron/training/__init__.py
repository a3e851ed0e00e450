"""echo_megatron.training"""
