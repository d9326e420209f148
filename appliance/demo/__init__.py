"""`appliance demo`: a broker, the aggregator and N boxes on one machine, as real processes."""
