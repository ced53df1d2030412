package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// api is the part of the Kubernetes API the registry uses: Services,
// EndpointSlices and Leases of one namespace, through client-go's REST
// client with a scheme of those three kinds only. (client-go's generated
// clientset and informer factory register every kind of every API group:
// linking them made each Beacon program 65 MB larger.)
type api struct {
	ns                            string
	core, discovery, coordination *rest.RESTClient
}

// A resource the registry lists, watches and writes.
type resource struct {
	client  func(*api) *rest.RESTClient
	name    string // "endpointslices"
	example runtime.Object
	list    func() runtime.Object
}

var (
	resServices       = resource{func(a *api) *rest.RESTClient { return a.core }, "services", &corev1.Service{}, func() runtime.Object { return &corev1.ServiceList{} }}
	resEndpointSlices = resource{func(a *api) *rest.RESTClient { return a.discovery }, "endpointslices", &discoveryv1.EndpointSlice{}, func() runtime.Object { return &discoveryv1.EndpointSliceList{} }}
	resLeases         = resource{func(a *api) *rest.RESTClient { return a.coordination }, "leases", &coordinationv1.Lease{}, func() runtime.Object { return &coordinationv1.LeaseList{} }}
)

func newAPI(cfg *rest.Config, httpc *http.Client, ns string) (*api, error) {
	sch := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, discoveryv1.AddToScheme, coordinationv1.AddToScheme} {
		if err := add(sch); err != nil {
			return nil, err
		}
	}
	codecs := serializer.NewCodecFactory(sch)
	mk := func(gv schema.GroupVersion, path string) (*rest.RESTClient, error) {
		c := rest.CopyConfig(cfg)
		c.GroupVersion, c.APIPath, c.NegotiatedSerializer = &gv, path, codecs.WithoutConversion()
		return rest.RESTClientForConfigAndClient(c, httpc)
	}
	a := &api{ns: ns}
	var err error
	if a.core, err = mk(corev1.SchemeGroupVersion, "/api"); err != nil {
		return nil, err
	}
	if a.discovery, err = mk(discoveryv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if a.coordination, err = mk(coordinationv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	return a, nil
}

// informer returns an informer on a resource of the namespace; modify, if
// not nil, changes its list and watch options (a label selector).
func (a *api) informer(res resource, modify func(*metav1.ListOptions), indexers cache.Indexers) cache.SharedIndexInformer {
	rc := res.client(a)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if modify != nil {
				modify(&o)
			}
			out := res.list()
			err := rc.Get().Namespace(a.ns).Resource(res.name).VersionedParams(&o, metav1.ParameterCodec).Do(ctx).Into(out)
			return out, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			if modify != nil {
				modify(&o)
			}
			o.Watch = true
			return rc.Get().Namespace(a.ns).Resource(res.name).VersionedParams(&o, metav1.ParameterCodec).Watch(ctx)
		},
	}
	if indexers == nil {
		indexers = cache.Indexers{}
	}
	return cache.NewSharedIndexInformerWithOptions(lw, res.example, cache.SharedIndexInformerOptions{Indexers: indexers})
}

// apply writes obj (a JSON-able map with apiVersion, kind and metadata)
// with server-side apply, as field manager FieldManager, and decodes the
// result into out.
func (a *api) apply(ctx context.Context, res resource, name string, obj map[string]any, out runtime.Object) error {
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("kubernetes registry: %w", err)
	}
	return res.client(a).Patch(types.ApplyPatchType).Namespace(a.ns).Resource(res.name).Name(name).
		VersionedParams(&metav1.PatchOptions{FieldManager: FieldManager, Force: new(true)}, metav1.ParameterCodec).
		Body(body).Do(ctx).Into(out)
}

// delete deletes an object; preconditions may be nil.
func (a *api) delete(ctx context.Context, res resource, name string, pre *metav1.Preconditions) error {
	return res.client(a).Delete().Namespace(a.ns).Resource(res.name).Name(name).
		Body(&metav1.DeleteOptions{Preconditions: pre}).Do(ctx).Error()
}
