# The hello-world app of the uWSGI tutorials:
#   gateway --http :9001 --wsgi-file app.py
def application(env, start_response):
    start_response('200 OK', [('Content-Type', 'text/html')])
    return [b"Hello World"]
