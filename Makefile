# Entry points; each does its own set-up on a fresh machine (see README).
.PHONY: test e2e cluster-up cluster-down unit integration molecule sanity lint

test:            ## every test: unit, integration, molecule, sanity, lint
	tools/test.sh

e2e:             ## the main job on the local control plane
	tools/e2e.sh

cluster-up:      ## start the local control plane (3 simulated GPU nodes), leave it running
	tools/local-cluster up --nodes 3

cluster-down:    ## stop it and delete its state
	tools/local-cluster down

unit integration molecule sanity lint:
	tools/test.sh $@
