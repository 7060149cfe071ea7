// Command kube is one multi-call binary holding the control-plane components
// of the local development cluster: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kubectl. Building them as one
// program compiles the code they share once (as hyperkube did).
//
// The component is chosen by the name the binary is called under (a symlink
// such as kube-apiserver -> kube) or, failing that, by the first argument:
// `kube kube-apiserver --help`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// components maps a name to a function that runs it with os.Args already
// rewritten so that os.Args[0] is the component's name.
var components = map[string]func() int{
	"etcd": func() int {
		etcdmain.Main(os.Args) // exits the process itself on error
		return 0
	},
	"kube-apiserver": func() int { return runCobra(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int {
		return runCobra(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func() int { return runCobra(scheduler.NewSchedulerCommand()) },
	"kubectl":        runKubectl,
}

func runCobra(command *cobra.Command) int {
	command.SetArgs(os.Args[1:])
	return cli.Run(command)
}

func runKubectl() int {
	// Verbosity must be known before the command is built (see cmd/kubectl).
	_, _ = logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args))
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func names() []string {
	out := make([]string, 0, len(components))
	for name := range components {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func main() {
	name := filepath.Base(os.Args[0])
	run, ok := components[name]
	if !ok && len(os.Args) > 1 {
		if run, ok = components[os.Args[1]]; ok {
			os.Args = os.Args[1:]
		}
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [ARGS...]\ncomponents: %v\n", name, names())
		os.Exit(2)
	}
	os.Exit(run())
}
