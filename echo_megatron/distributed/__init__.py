"""echo_megatron.distributed"""
