"""echo_megatron.model"""
