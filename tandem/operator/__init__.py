"""kopf operator: thin handlers over pure reconcile, rendering and scaling policy."""
