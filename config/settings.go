package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Settings returns every key of the configuration with its value as text,
// sorted by key, with secrets redacted: Secret values print as
// "[redacted]" and the passwords in URLs as libpq's "xxxxx". Users are
// left out (their verifiers are secrets; the console lists users
// separately); per-tenant overrides appear as tenants.<slug>.<key>.
func (c *Config) Settings() [][2]string {
	var out [][2]string
	flatten(reflect.ValueOf(*c), "", &out)
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

var durationType = reflect.TypeFor[time.Duration]()

func flatten(v reflect.Value, prefix string, out *[][2]string) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("mapstructure")
		if tag == "" || tag == "-" || tag == "users" {
			continue
		}
		key := prefix + tag
		fv := v.Field(i)
		switch {
		case fv.Type() == reflect.TypeFor[Secret]():
			*out = append(*out, [2]string{key, fv.Interface().(Secret).String()})
		case fv.Type() == durationType:
			*out = append(*out, [2]string{key, fv.Interface().(time.Duration).String()})
		case fv.Kind() == reflect.Struct:
			flatten(fv, key+".", out)
		case fv.Kind() == reflect.Map:
			keys := fv.MapKeys()
			for _, k := range keys {
				flatten(fv.MapIndex(k), key+"."+k.String()+".", out)
			}
		case fv.Kind() == reflect.Slice:
			parts := make([]string, fv.Len())
			for j := range fv.Len() {
				parts[j] = fmt.Sprint(fv.Index(j).Interface())
			}
			*out = append(*out, [2]string{key, strings.Join(parts, ",")})
		case fv.Kind() == reflect.String && strings.HasSuffix(tag, "url") && fv.String() != "":
			*out = append(*out, [2]string{key, Redacted(fv.String())})
		default:
			*out = append(*out, [2]string{key, fmt.Sprint(fv.Interface())})
		}
	}
}
