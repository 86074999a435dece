package console

import (
	"net/http"
	"net/url"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

type jobsData struct {
	Jobs        []api.Job
	Next, First string
}

func jobURL(id string) string { return Prefix + "jobs/" + url.PathEscape(id) }

func (c *Console) jobsPage(w http.ResponseWriter, r *http.Request, s *session) {
	page := r.URL.Query().Get("page")
	list, err := s.client.Jobs(withRemote(r), 50, page)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d := jobsData{Jobs: list.Items}
	if list.NextPageToken != "" {
		d.Next = Prefix + "jobs?page=" + url.QueryEscape(list.NextPageToken)
	}
	if page != "" {
		d.First = Prefix + "jobs"
	}
	c.render(w, r, s, http.StatusOK, "jobs", "Jobs", d)
}

type jobData struct {
	Job       api.Job
	Log       []api.JobLogEvent
	Truncated bool
	Running   bool
}

func (d jobData) watch() string { return d.Job.ID }

// maxLogPages bounds the log a job page shows (1,000 entries a page).
const maxLogPages = 5

// jobPage shows a job, its servers and its log; while it runs, the page follows the
// job's events.
func (c *Console) jobPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, id := withRemote(r), r.PathValue("id")
	job, err := s.client.Job(ctx, id)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d := jobData{Job: job, Running: job.Status != api.JobCompleted}
	token := ""
	for i := 0; ; i++ {
		page, err := s.client.JobLog(ctx, id, 1000, token)
		if err != nil {
			c.apiFailed(w, r, s, err)
			return
		}
		d.Log = append(d.Log, page.Items...)
		if len(page.Items) < 1000 {
			break
		}
		if i == maxLogPages-1 {
			d.Truncated = true
			break
		}
		token = page.NextPageToken
	}
	c.render(w, r, s, http.StatusOK, "job", "Job "+job.ID, d)
}
