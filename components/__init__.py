"""kata-mesh components: one ComponentResource per concept."""
