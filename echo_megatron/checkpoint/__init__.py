"""echo_megatron.checkpoint"""
